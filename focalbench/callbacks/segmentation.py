"""Segmentation outputs: TensorBoard pictures (mask overlays, per-class IoU) and palette PNGs from ``predict``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.patches import Patch
from PIL import Image

from focalbench.callbacks.predictions import PredictionWriter, output_name
from focalbench.callbacks.tensorboard import displayable, image_normalization, log_class_bars, log_figure, tensorboard
from focalbench.data.seg_transforms import IGNORE_INDEX
from focalbench.tasks.metrics import segmentation_scores


def default_palette() -> np.ndarray:
    """The PASCAL VOC colour map, 256 × RGB uint8: class 0 black, then well-separated colours; 255 (ignore) is
    VOC's cream boundary colour."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, colour = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[index] = colour
    return palette


def class_palette(trainer: Trainer | None) -> np.ndarray:
    """256 × RGB: the data's class colours (``data.palette``) where given, the VOC colour map elsewhere."""
    palette = default_palette()
    given = getattr(getattr(trainer, "datamodule", None), "palette", None)
    if given:
        palette[: len(given)] = np.asarray(given, np.uint8)
    return palette


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (H×W×3 floats in [0, 1]) blended with the class colours of ``mask``; ignored pixels left bare."""
    out = image.copy()
    keep = mask != IGNORE_INDEX
    out[keep] = (1 - alpha) * image[keep] + alpha * palette[mask[keep]] / 255.0
    return out


class SegmentationImages(Callback):
    """The first validation images beside their true and predicted masks (class colours over the image; ignored
    pixels bare), rank 0, every validation. Reads the predictions the task's ``validation_step`` returns."""

    def __init__(self, num_images: int = 4, alpha: float = 0.6) -> None:
        self.num_images = num_images
        self.alpha = alpha

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking or not outputs:
            return
        if tensorboard(trainer) is None:  # nothing to draw on (fast_dev_run, CSV logger): skip the rendering
            return
        count = min(self.num_images, len(outputs))
        palette = class_palette(trainer)
        figure, axes = plt.subplots(count, 3, figsize=(7.5, 2.6 * count), squeeze=False)
        seen: set[int] = set()
        for row, (image, mask, prediction) in enumerate(zip(batch["image"], batch["mask"], outputs[:count])):
            shown = displayable(image[None], image_normalization(trainer))[0].numpy()
            mask, prediction = mask.long().cpu().numpy(), prediction.cpu().numpy()
            seen |= set(np.unique(mask).tolist()) | set(np.unique(prediction).tolist())
            for axis, title, labels in zip(axes[row], ("image", "true", "predicted"), (None, mask, prediction)):
                axis.imshow(shown if labels is None else overlay(shown, labels, palette, self.alpha))
                axis.set_title(title, fontsize=8)
                axis.axis("off")
        names = pl_module.class_names
        handles = [Patch(color=palette[k] / 255.0, label=names[k]) for k in sorted(seen - {IGNORE_INDEX})[:20]]
        figure.legend(handles=handles, loc="lower center", ncol=min(5, max(1, len(handles))), fontsize=7)
        figure.tight_layout(rect=(0, 0.06, 1, 1))
        log_figure(trainer, "val/segmentation", figure)


class SegmentationClassIoU(Callback):
    """Per-class IoU of the validation split as a bar chart, every validation; classes absent from both the ground
    truth and the predictions (IoU undefined, left out of mIoU) are marked "n/a". Reads the scores the task computed
    over the whole split (``evaluation_results["val"]``, see :func:`segmentation_scores`), drawn on rank 0."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or tensorboard(trainer) is None or not trainer.is_global_zero:
            return
        scores = segmentation_scores(pl_module.evaluation_results["val"]["confusion"])
        title = f"mIoU {float(scores['mIoU']):.4f}  mAcc {float(scores['mAcc']):.4f}"
        log_class_bars(trainer, "val/class_iou", pl_module.class_names, scores["IoU"], "IoU", title, "tab:blue")


class SegmentationMaskWriter(PredictionWriter):
    """One palette-mode PNG per image at its original size: pixel value = predicted class index (0..K-1, e.g.
    0..149 for ADE20K; the official ADE20K submission format is that + 1), colours from the data's ``palette`` or the
    VOC colour map. Files go under ``output_dir`` (default ``<log dir>/predictions``) with the input folder's layout,
    named after the whole input name (``sub/flower.tif`` -> ``sub/flower.tif.png``: no two inputs share an output).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(output_dir, write_interval="batch")
        self.written: list[Path] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self.written = []

    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction, batch_indices, batch, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        out = self.directory(trainer)
        root = getattr(trainer.datamodule, "predict_root", None) if trainer.datamodule is not None else None
        palette = class_palette(trainer).flatten().tolist()
        for path, mask in zip(prediction["path"], prediction["mask"]):
            target = out / output_name(path, root)
            target.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(mask.numpy().astype(np.uint8))
            image.putpalette(palette)
            image.save(target)
            self.written.append(target)
            self.predicted.append(path)
