"""The LightningModule every task builds on: backbone by name, freezing, optimizer groups, per-step lr schedule."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from focalbench.callbacks.learning_rate import BaseLearningRate
from focalbench.callbacks.summary import RunSummary
from focalbench.callbacks.tensorboard import HyperparametersWithMetric
from focalbench.models.factory import build_backbone
from focalbench.tasks.optim import Schedule, lr_lambda, param_groups

# Architecture overrides for the backbone (``embed_dim``, ``depths``, ``focal_windows`` …), typed so YAML is checked.
BackboneKwargs = dict[str, int | float | bool | str | list[int] | None]


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)


class BaseTask(LightningModule):
    """Template for the tasks (torchgeo-style): ``__init__`` saves the hyperparameters and calls
    ``configure_models``, ``configure_losses`` and ``configure_metrics``, which the subclasses fill.

    Args:
        backbone: a FocalNet variant (``focalnet_tiny_srf`` …) or any timm model name.
        pretrained: weights for the backbone: a local file (official, timm or Hugging Face layout) or a hub id.
        backbone_kwargs: architecture overrides passed to the backbone (e.g. ``focal_windows: 9``, or a tiny
            ``embed_dim``/``depths`` for a demo); an unknown name is an error from the model's constructor.
        num_classes: number of classes; linked from the data module by ``cli.py``.
        class_names: class names for logs and predictions; linked from the data module.
        drop_path_rate: stochastic depth of the backbone.
        freeze_backbone: train only the heads.
        frozen_stages: freeze the patch embedding and the first N stages (FocalNet backbones).
        layer_decay: layer-wise lr decay (e.g. 0.9); None = same lr everywhere.
        optimizer: the optimizer class and its arguments (``torch.optim.AdamW`` by default); it receives the groups.
        schedule: lr decay after warm-up, stepped every optimizer step.
        warmup_epochs / warmup_steps: linear warm-up length (steps win when both are set).
        milestones: epochs at which ``schedule: step`` multiplies the lr by ``gamma``.
        channels_last: run the model in channels_last memory format (FocalNet does so internally anyway).
        compile: ``torch.compile`` the model's forward for training and evaluation.
        grad_checkpointing: recompute activations in the backward pass (FocalNet and timm models).
    """

    def __init__(
        self,
        backbone: str = "focalnet_tiny_srf",
        pretrained: str | None = None,
        backbone_kwargs: BackboneKwargs | None = None,
        num_classes: int = 1000,
        class_names: Sequence[str] | None = None,
        drop_path_rate: float = 0.1,
        freeze_backbone: bool = False,
        frozen_stages: int = 0,
        layer_decay: float | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        schedule: Schedule = "cosine",
        warmup_epochs: float = 0.0,
        warmup_steps: int | None = None,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        min_lr_ratio: float = 0.0,
        poly_power: float = 1.0,
        channels_last: bool = False,
        compile: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        self._apply_freezing()
        if grad_checkpointing:
            self.backbone_module().set_grad_checkpointing(True)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._compiled = None

    # ------------------------------------------------------------ template hooks
    def configure_models(self) -> None:
        raise NotImplementedError

    def configure_losses(self) -> None:
        pass

    def configure_metrics(self) -> None:
        pass

    def backbone_module(self) -> nn.Module:
        """The pretrained part: frozen by ``freeze_backbone``, lr-decayed by depth with ``layer_decay``."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """Newly initialised parts, trained at the full lr."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared by the tasks
    monitor: str  # the metric the best checkpoint is chosen by (maximised); each task names its own

    def build_dense_backbone(self) -> nn.Module:
        """The multi-scale backbone of the dense tasks (:func:`build_backbone`) from the hyperparameters."""
        hp = self.hparams
        return build_backbone(
            hp.backbone, pretrained=hp.pretrained, drop_path_rate=hp.drop_path_rate, **(hp.backbone_kwargs or {})
        )

    def checkpoint_callbacks(self, filename: str) -> list[Callback]:
        """What every run gets unless ``trainer.callbacks`` configures its own of the type: the best checkpoint by
        ``monitor`` (maximised) named by ``filename`` + ``last.ckpt``, the base lr as one curve (``lr``), the
        hyperparameters with the monitored metric in TensorBoard, and the summary printed at the end of a run."""
        best = ModelCheckpoint(
            monitor=self.monitor, mode="max", save_last=True, filename=filename, auto_insert_metric_name=False
        )
        return self.default_callbacks(best, BaseLearningRate(), HyperparametersWithMetric(), RunSummary())

    def default_callbacks(self, *callbacks: Callback) -> list[Callback]:
        """``callbacks`` less those of a type the user configured in ``trainer.callbacks``: for ``configure_callbacks``,
        whose callbacks Lightning puts in place of configured ones of the same type, so the user's would be lost.

        Lightning's own ``ModelCheckpoint()`` (there when checkpointing is on and none is configured) does not count
        as configured: ours replaces it; with ``trainer.enable_checkpointing: false`` it is absent and ours too."""
        present = list(self._trainer.callbacks) if self._trainer is not None else []
        configured = [cb for cb in present if not _lightning_default(cb)]
        checkpointing = self._trainer is None or any(_lightning_default(cb) for cb in present)
        return [
            cb
            for cb in callbacks
            if not any(isinstance(user, type(cb)) for user in configured)
            and (checkpointing or not isinstance(cb, ModelCheckpoint))
        ]

    # ------------------------------------------------------------------ running
    def network(self) -> nn.Module:
        """The module the steps call: compiled once on first use when ``compile`` is set."""
        if not self.hparams.compile:
            return self.model
        if self._compiled is None:
            # kept out of the module tree so the state dict keeps its plain keys
            object.__setattr__(self, "_compiled", torch.compile(self.model))
        return self._compiled

    def _apply_freezing(self) -> None:
        backbone = self.backbone_module()
        if self.hparams.freeze_backbone:
            backbone.requires_grad_(False)
        elif self.hparams.frozen_stages:
            if not hasattr(backbone, "patch_embed") or not hasattr(backbone, "layers"):
                raise ValueError("model.frozen_stages needs a FocalNet backbone; use model.freeze_backbone instead")
            backbone.patch_embed.requires_grad_(False)
            for stage in backbone.layers[: self.hparams.frozen_stages]:
                stage.requires_grad_(False)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._has_weights = True  # by --ckpt_path or load_from_checkpoint: predict is not from random weights

    def on_train_start(self) -> None:
        self._has_weights = True  # trained in this process (fit, then predict with the same module)

    def on_predict_start(self) -> None:
        """Warns when nothing but random initialisation stands behind the predictions (a forgotten flag)."""
        if self.trainer.ckpt_path is not None or getattr(self, "_has_weights", False):
            return
        if not self.hparams.pretrained:
            rank_zero_warn(
                "predicting with random weights: no checkpoint and no pretrained weights were given, so the outputs "
                "are noise; pass --ckpt_path PATH (a checkpoint of this task) or --model.pretrained PATH|HUB_ID"
            )
        elif self.head_modules():
            rank_zero_warn(
                "predicting with untrained heads: --model.pretrained loads the backbone only; pass --ckpt_path PATH "
                "(a checkpoint of this task)"
            )

    def on_train_epoch_start(self) -> None:
        # Streamed (iterable) data sets shuffle by seed + epoch; samplers get their epoch from Lightning itself.
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> dict:
        groups = param_groups(self.backbone_module(), self.head_modules(), self.hparams.layer_decay)
        optimizer = self.optimizer(groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.pop("lr_scale", 1.0)
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, self.trainer.num_training_batches // self.trainer.accumulate_grad_batches)
        hp = self.hparams
        warmup = hp.warmup_steps if hp.warmup_steps is not None else int(hp.warmup_epochs * steps_per_epoch)
        schedule = lr_lambda(
            total,
            warmup,
            hp.schedule,
            min_lr_ratio=hp.min_lr_ratio,
            poly_power=hp.poly_power,
            milestones=[m * steps_per_epoch for m in hp.milestones],
            gamma=hp.gamma,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"},
        }


def _lightning_default(callback: Callback) -> bool:
    """Whether ``callback`` is the ``ModelCheckpoint()`` Lightning adds when none is configured."""
    return (
        type(callback) is ModelCheckpoint
        and callback.monitor is None
        and callback.filename is None
        and callback.dirpath is None
        and callback.save_last is None
    )
