"""TensorBoard pictures for classification: predictions on validation images and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sized

import matplotlib.pyplot as plt
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from focalbench.callbacks.tensorboard import displayable, grid, image_normalization, log_figure


class ClassificationImages(Callback):
    """Validation images with predicted vs true class (green when right, red when wrong), rank 0, every validation.

    The images are a fixed sample spread evenly over the validation set (indices 0 .. N-1 at equal steps), the
    same every epoch, so a class-sorted split shows its classes, not only the first batch's. Streamed (unindexable)
    validation data shows the first ``num_images`` of the first batch.
    """

    def __init__(self, num_images: int = 16) -> None:
        self.num_images = num_images
        self.shown_labels: list[int] = []  # the true classes last drawn
        self._first_batch: dict | None = None

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0 and trainer.is_global_zero and not trainer.sanity_checking:
            self._first_batch = {key: batch[key][: self.num_images] for key in ("image", "label")}

    def sample(self, trainer: Trainer) -> dict | None:
        """``{"image", "label"}`` of the fixed sample (or of the first batch for unindexable data)."""
        dataset = getattr(trainer.val_dataloaders, "dataset", None)
        if not isinstance(dataset, Sized) or not hasattr(dataset, "__getitem__") or len(dataset) == 0:
            return self._first_batch
        indices = torch.linspace(0, len(dataset) - 1, min(self.num_images, len(dataset))).round().long().unique()
        items = [dataset[int(i)] for i in indices]
        return {
            "image": torch.stack([torch.as_tensor(item["image"]) for item in items]),
            "label": torch.tensor([int(item["label"]) for item in items]),
        }

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        sample = self.sample(trainer)
        if sample is None:
            return
        images, labels = sample["image"].to(pl_module.device), sample["label"]
        precision = trainer.precision_plugin  # as the validation step ran: input dtype and autocast
        with torch.no_grad(), precision.val_step_context():
            predicted = pl_module(precision.convert_input(images)).argmax(-1)
        names = pl_module.class_names
        self.shown_labels = labels.tolist()
        figure, axes = grid(len(images))
        shown = displayable(images, image_normalization(trainer))
        for axis, image, pred, true in zip(axes, shown, predicted.tolist(), self.shown_labels):
            axis.imshow(image)
            axis.set_title(f"{names[pred]} / {names[true]}", color="green" if pred == true else "red", fontsize=8)
        figure.suptitle("predicted / true")
        log_figure(trainer, "val/predictions", figure)


class ConfusionMatrixImage(Callback):
    """The validation confusion matrix (rows: true class, columns: predicted), row-normalised, each epoch.

    Reads ``pl_module.evaluation_results["val"]["confusion"]``, the matrix the task computed over the whole split
    (synchronised across ranks) at the end of the epoch.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        matrix = pl_module.evaluation_results["val"]["confusion"].float().cpu()
        normalised = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
        names = pl_module.class_names
        size = min(20, 2 + 0.4 * len(names))
        figure, axis = plt.subplots(figsize=(size, size))
        axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        if len(names) <= 40:
            axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            axis.set_yticks(range(len(names)), names, fontsize=7)
            for (row, col), count in zip(
                torch.cartesian_prod(torch.arange(len(names)), torch.arange(len(names))).tolist(),
                matrix.flatten().tolist(),
            ):
                if count:
                    axis.text(col, row, int(count), ha="center", va="center", fontsize=6)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        figure.tight_layout()
        log_figure(trainer, "val/confusion_matrix", figure)
