"""The learning rate as one TensorBoard curve: the schedule, not one line per parameter group."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The configured lr (``optimizer.defaults["lr"]``) times the schedule's current factor, read from a group's
    ``lr / initial_lr`` (torch schedulers store ``initial_lr``; every group has the same factor). Groups scaled by
    layer decay run at a fixed fraction of this."""
    group = optimizer.param_groups[0]
    initial = group.get("initial_lr")
    factor = group["lr"] / initial if initial else 1.0
    return float(optimizer.defaults["lr"] * factor)


class BaseLearningRate(Callback):
    """Logs :func:`base_lr` as ``lr`` at the training steps Lightning logs (``log_every_n_steps``): the lr that
    step trains with, one curve however many parameter groups layer decay makes."""

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.optimizers:
            pl_module.log("lr", base_lr(trainer.optimizers[0]), on_step=True, on_epoch=False, batch_size=1)
