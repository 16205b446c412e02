"""Helpers shared by the picture callbacks: figures to TensorBoard, images back to displayable form."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are rendered for TensorBoard, never shown

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

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
