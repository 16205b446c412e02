"""TensorBoard: helpers shared by the picture callbacks (figures to TensorBoard, images back to displayable form)
and the hyperparameters shown with the monitored metric."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are rendered for TensorBoard, never shown

from collections.abc import Iterator, Mapping  # noqa: E402
from typing import Any  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402

from focalbench.models.contract import IMAGENET_NORMALIZATION, Normalization  # noqa: E402


def tensorboard(trainer: Trainer):
    """The TensorBoard ``SummaryWriter`` of the trainer's loggers, or None (other loggers draw nothing)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def log_figure(trainer: Trainer, tag: str, figure: plt.Figure) -> None:
    writer = tensorboard(trainer)
    if writer is not None:
        writer.add_figure(tag, figure, global_step=trainer.global_step)
    plt.close(figure)


def image_normalization(trainer: Trainer | None) -> Normalization:
    """The mean / std the data module applied to the images it loads (ImageNet's without one)."""
    datamodule = getattr(trainer, "datamodule", None)
    return getattr(datamodule, "image_normalization", IMAGENET_NORMALIZATION)


def displayable(images: torch.Tensor, normalization: Normalization = IMAGENET_NORMALIZATION) -> torch.Tensor:
    """Normalised NCHW images back to NHWC floats in [0, 1] for ``imshow`` (``normalization``: what the data
    applied, :func:`image_normalization`)."""
    mean, std = normalization
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def grid(count: int, size: float = 2.2) -> tuple[plt.Figure, list[plt.Axes]]:
    """A near-square grid of ``count`` axes without ticks."""
    cols = max(1, min(count, int(count**0.5 + 0.999)))
    rows = (count + cols - 1) // cols
    figure, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    flat = list(axes.flat)
    for axis in flat:
        axis.axis("off")
    return figure, flat[:count]


class HyperparametersWithMetric(Callback):
    """TensorBoard's HParams tab lists the run's hyperparameters with the task's monitored metric (``val_acc1``,
    ``val_mIoU`` …, read from its own scalar curve), in place of Lightning's ``hp_metric`` placeholder: a chart stuck
    at -1 at the top of the scalars."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning logs the hyperparameters after this hook; the loggers it builds itself have default_hp_metric on.
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger._default_hp_metric = False

    @rank_zero_only
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", None)
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if monitor is None or logger is None:
            return
        from torch.utils.tensorboard.summary import hparams

        params = dict(_flat(logger.hparams or dict(pl_module.hparams)))
        writer = logger.experiment._get_file_writer()
        for summary in hparams(params, {monitor: 0.0}):  # the value is unused: the tab reads the metric's curve
            writer.add_summary(summary)


def _flat(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested hyperparameters as ``a/b`` keys with the scalar types TensorBoard takes (others as text)."""
    for key, value in params.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value if isinstance(value, (bool, int, float, str)) else str(value)


def log_class_bars(
    trainer: Trainer, tag: str, names: list[str], values: torch.Tensor, label: str, title: str, colour: str
) -> None:
    """One horizontal bar per class (values in [0, 1]; NaN, a class with no score, drawn as "n/a") to TensorBoard."""
    values = values.float().cpu()
    figure, axis = plt.subplots(figsize=(7, 1 + 0.16 * len(names)))
    axis.barh(range(len(names)), torch.nan_to_num(values, nan=0.0).numpy(), color=colour)
    axis.set_yticks(range(len(names)), names, fontsize=max(3, 8 - len(names) // 40))
    for k in torch.nonzero(values.isnan()).flatten().tolist():
        axis.text(0.01, k, "n/a", va="center", fontsize=6, color="grey")
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel(label)
    axis.set_title(title)
    figure.tight_layout()
    log_figure(trainer, tag, figure)
