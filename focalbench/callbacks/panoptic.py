"""Panoptic outputs: COCO panoptic result files from ``predict``, TensorBoard overlays and PQ per class."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from focalbench.callbacks.predictions import prediction_dir
from focalbench.callbacks.tensorboard import displayable, log_class_bars, log_figure, tensorboard
from focalbench.data.panoptic_format import id_to_rgb


def _data_categories(trainer: Trainer) -> tuple[list[int] | None, dict[str, int]]:
    """The data's original category id per class index and its ``file name -> image id``, where known."""
    data = getattr(trainer, "datamodule", None)
    categories = getattr(data, "categories", None) if data is not None and data.root is not None else None
    ids = list(categories.ids) if categories is not None else None
    image_ids = getattr(data, "image_ids", {}) if categories is not None else {}
    return ids, image_ids


class PanopticWriter(BasePredictionWriter):
    """COCO panoptic results: one PNG per image (segment ids as ``R + 256·G + 256²·B``, 0 = no segment) under
    ``panoptic/`` and ``panoptic.json`` with, per image, ``image_id``, ``file_name`` (the PNG) and ``segments_info``
    (``id``, ``category_id`` = the data's original category id, ``isthing``-free as panopticapi reads it, and
    ``score``). ``output_dir`` defaults to ``<log dir>/predictions``. Under DDP each rank writes
    ``panoptic.rank<r>.json``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.output_dir = output_dir
        self.annotations: list[dict] = []
        self.path: Path | None = None

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.annotations = []

    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction, batch_indices, batch, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        out = prediction_dir(trainer, self.output_dir) / "panoptic"
        out.mkdir(parents=True, exist_ok=True)
        category_ids, image_ids = _data_categories(trainer)
        for path, result in zip(prediction["path"], prediction["panoptic"]):
            name = Path(path).with_suffix(".png").name
            segmentation = result["segmentation"].clamp(min=0).numpy()  # -1 (nothing found) -> 0
            Image.fromarray(id_to_rgb(segmentation)).save(out / name)
            segments = [
                {
                    "id": int(s["id"]),
                    "category_id": category_ids[s["label_id"]] if category_ids else int(s["label_id"]),
                    "score": float(s["score"]),
                }
                for s in result["segments_info"]
            ]
            image_id = image_ids.get(Path(path).name, len(self.annotations) + 1)
            self.annotations.append({"image_id": image_id, "file_name": name, "segments_info": segments})

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.path = prediction_dir(trainer, self.output_dir) / f"panoptic{suffix}.json"
        self.path.write_text(json.dumps({"annotations": self.annotations}))


def segment_colours(segmentation: np.ndarray, seed: int = 0) -> np.ndarray:
    """An H×W×3 float image with one random colour per segment id (0 and below: black)."""
    ids = np.unique(segmentation)
    colours = np.random.default_rng(seed).uniform(0.15, 1.0, (len(ids), 3))
    colours[ids <= 0] = 0
    return colours[np.searchsorted(ids, segmentation)]


class PanopticImages(Callback):
    """The first validation images beside their true and predicted panoptic segmentations (a colour per segment,
    class names at segment centres), rank 0, every validation."""

    def __init__(self, num_images: int = 4, alpha: float = 0.6) -> None:
        self.num_images = num_images
        self.alpha = alpha

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking or not outputs:
            return
        if tensorboard(trainer) is None:
            return
        count = min(self.num_images, len(outputs))
        names = pl_module.class_names
        figure, axes = plt.subplots(count, 3, figsize=(7.5, 2.6 * count), squeeze=False)
        for row in range(count):
            shown = displayable(batch["image"][row][None])[0].numpy()
            truth = batch["segments"][row].cpu().numpy()
            true_labels = {s["id"]: s["category_id"] for s in batch["segments_info"][row]}
            predicted = outputs[row]["segmentation"].cpu().numpy()
            pred_labels = {s["id"]: s["label_id"] for s in outputs[row]["segments_info"]}
            panels = (("image", None, {}), ("true", truth, true_labels), ("predicted", predicted, pred_labels))
            for axis, (title, segmentation, labels) in zip(axes[row], panels):
                if segmentation is None:
                    axis.imshow(shown)
                else:
                    axis.imshow((1 - self.alpha) * shown + self.alpha * segment_colours(segmentation))
                    for segment_id, label in labels.items():
                        ys, xs = np.nonzero(segmentation == segment_id)
                        if len(ys):
                            axis.text(xs.mean(), ys.mean(), names[label], fontsize=6, ha="center", color="white")
                axis.set_title(title, fontsize=8)
                axis.axis("off")
        figure.tight_layout()
        log_figure(trainer, "val/panoptic", figure)


class PanopticClassPQ(Callback):
    """PQ per class of the validation split as a bar chart (absent classes "n/a"), every validation; reads what the
    task computed over the whole split (``evaluation_results["val"]``), drawn on rank 0."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or tensorboard(trainer) is None or not trainer.is_global_zero:
            return
        scores = pl_module.evaluation_results["val"]
        title = (f"PQ {float(scores['PQ']):.4f}  things {float(scores['PQ_things']):.4f}  "
                 f"stuff {float(scores['PQ_stuff']):.4f}")  # fmt: skip
        log_class_bars(trainer, "val/class_pq", pl_module.class_names, scores["PQ_class"], "PQ", title, "tab:green")
