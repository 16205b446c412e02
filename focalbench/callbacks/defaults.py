"""The callbacks every focalbench run has, added by the CLI from what the task declares (``monitor``,
``checkpoint_filename``, ``prediction_writer``), so that tasks import no callbacks.

From Python: ``trainer = Trainer(...); add_default_callbacks(trainer, task)`` before ``fit`` / ``predict``.
"""

from __future__ import annotations

from importlib import import_module

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from focalbench.callbacks.learning_rate import BaseLearningRate
from focalbench.callbacks.memory import RetainFreedMemory
from focalbench.callbacks.summary import RunSummary
from focalbench.callbacks.tensorboard import HyperparametersWithMetric


def add_default_callbacks(trainer: Trainer, task: LightningModule) -> None:
    """Add to ``trainer`` what the user did not configure a callback of the same type for: the best checkpoint by
    ``task.monitor`` (maximised) named ``task.checkpoint_filename`` + ``last.ckpt``, the base lr as one curve
    (``lr``), the hyperparameters with the monitored metric in TensorBoard, the summary printed at the end of a run,
    freed memory kept for reuse on CPU runs (:class:`~focalbench.callbacks.memory.RetainFreedMemory`) and the
    task's prediction writer.

    Lightning's own ``ModelCheckpoint()`` (there when checkpointing is on and none is configured) does not count as
    configured: ours replaces it; with ``trainer.enable_checkpointing: false`` it is absent and ours is not added.
    """
    present = list(trainer.callbacks)
    configured = [cb for cb in present if not _lightning_default(cb)]
    checkpointing = any(_lightning_default(cb) for cb in present)
    candidates: list[Callback] = [BaseLearningRate(), HyperparametersWithMetric(), RunSummary(), RetainFreedMemory()]
    if checkpointing:
        candidates.insert(
            0,
            ModelCheckpoint(
                monitor=task.monitor,
                mode="max",
                save_last=True,
                filename=task.checkpoint_filename,
                auto_insert_metric_name=False,
            ),
        )
    writer = getattr(task, "prediction_writer", None)
    if writer:
        module, name = writer.rsplit(".", 1)
        candidates.append(getattr(import_module(module), name)())
    added = [cb for cb in candidates if not any(isinstance(user, type(cb)) for user in configured)]
    trainer.callbacks = [cb for cb in present if not _lightning_default(cb)] + added


def _lightning_default(callback: Callback) -> bool:
    """Whether ``callback`` is the ``ModelCheckpoint()`` Lightning adds when none is configured."""
    return (
        type(callback) is ModelCheckpoint
        and callback.monitor is None
        and callback.filename is None
        and callback.dirpath is None
        and callback.save_last is None
    )
