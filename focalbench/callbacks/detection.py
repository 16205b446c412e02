"""Detection outputs: validation pictures for TensorBoard and COCO-style result files from ``predict``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from pycocotools import mask as mask_utils
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid, save_image

from focalbench.callbacks.predictions import PredictionWriter, output_name
from focalbench.callbacks.tensorboard import tensorboard


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: list[str],
    masks: torch.Tensor | None = None,
    colour: str = "lime",
) -> torch.Tensor:
    """A 0..1 float CHW image with masks (boolean N×H×W) and labelled boxes drawn over it, as uint8 CHW."""
    canvas = (image.detach().clamp(0, 1) * 255).to(torch.uint8).cpu()
    if masks is not None and len(masks):
        canvas = draw_segmentation_masks(canvas, masks.bool().cpu(), alpha=0.4, colors=colour)
    if len(boxes):
        canvas = draw_bounding_boxes(canvas, boxes.detach().cpu(), labels=labels, colors=colour, width=1)
    return canvas


class DetectionImages(Callback):
    """The first validation images with ground truth (left, green) beside the predictions scoring at least
    ``score_threshold`` (right, orange), masks included, as one TensorBoard image (``val/detections``)."""

    def __init__(self, num_images: int = 8, score_threshold: float = 0.3) -> None:
        self.num_images = num_images
        self.score_threshold = score_threshold

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking or not outputs:
            return
        writer = tensorboard(trainer)
        if writer is None:
            return
        names = pl_module.class_names
        threshold = pl_module.hparams.get("mask_threshold", 0.5)
        panels = []
        for image, target, det in list(zip(batch["image"], batch["target"], outputs))[: self.num_images]:
            truth = draw_detections(
                image, target["boxes"], [names[i - 1] for i in target["labels"].tolist()], target.get("masks")
            )
            keep = det["scores"] >= self.score_threshold
            masks = det["masks"][keep, 0] > threshold if "masks" in det else None
            labels = [f"{names[i - 1]} {s:.2f}" for i, s in zip(det["labels"][keep].tolist(), det["scores"][keep])]
            predicted = draw_detections(image, det["boxes"][keep], labels, masks, colour="orange")
            panels.append(torch.cat([truth, predicted], dim=2))
        # images differ in size: pad each pair to the largest before tiling
        height = max(p.shape[1] for p in panels)
        width = max(p.shape[2] for p in panels)
        padded = [torch.nn.functional.pad(p, (0, width - p.shape[2], 0, height - p.shape[1])) for p in panels]
        writer.add_image("val/detections", make_grid(padded, nrow=2, padding=4), global_step=trainer.global_step)


class CocoResultsWriter(PredictionWriter):
    """``detections.json`` in the COCO results format (``loadRes`` reads it): one entry per detection with
    ``image_id``, ``file_name``, ``category_id`` (the data's original id), ``bbox`` (xywh), ``score`` and, for
    Mask R-CNN, ``segmentation`` (compressed RLE). With ``draw_images``, each image is also saved with its
    detections scoring at least ``score_threshold`` under ``images/``, named after the whole input path
    (``sub/flower.tif`` -> ``images/sub/flower.tif.png``). Under DDP each rank writes ``detections.rank<r>.json``.
    """

    def __init__(self, output_dir: str | None = None, draw_images: bool = False, score_threshold: float = 0.5) -> None:
        super().__init__(output_dir, write_interval="batch_and_epoch")
        self.draw_images = draw_images
        self.score_threshold = score_threshold
        self.results: list[dict] = []
        self.path: Path | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self.results = []

    @staticmethod
    def category_ids(trainer: Trainer) -> list[int] | None:
        return getattr(trainer.datamodule, "category_ids", None) if trainer.datamodule is not None else None

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        ids = self.category_ids(trainer)
        for index, item in enumerate(prediction):
            self.results += coco_results(item, ids)
            self.predicted.append(batch["path"][index])
            if self.draw_images:
                self._draw(trainer, pl_module, batch["image"][index], item)

    def _draw(self, trainer: Trainer, pl_module: LightningModule, image: torch.Tensor, item: dict) -> None:
        keep = (item["scores"] >= self.score_threshold).nonzero().flatten().tolist()
        masks = None
        if "masks" in item:
            masks = torch.stack([torch.from_numpy(mask_utils.decode(item["masks"][i])) for i in keep]) if keep else None
        names = pl_module.class_names
        labels = [f"{names[item['labels'][i] - 1]} {item['scores'][i]:.2f}" for i in keep]
        drawn = draw_detections(image, item["boxes"][keep], labels, masks, colour="orange")
        path = self.directory(trainer) / "images" / output_name(item["file_name"])
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(drawn.float() / 255, path)

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions, batch_indices) -> None:
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.path = self.directory(trainer) / f"detections{suffix}.json"
        self.path.write_text(json.dumps(self.results))


def coco_results(item: dict, category_ids: list[int] | None = None) -> list[dict]:
    """One image's detections (``predict_step``'s dict) as COCO result entries; labels 1..K become the data's
    category ids (``category_ids[label - 1]``) when given."""
    out = []
    for k, (box, score, label) in enumerate(zip(item["boxes"].tolist(), item["scores"].tolist(), item["labels"])):
        x1, y1, x2, y2 = box
        entry = {
            "image_id": item["image_id"],
            "file_name": item["file_name"],
            "category_id": category_ids[int(label) - 1] if category_ids else int(label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
        }
        if "masks" in item:
            entry["segmentation"] = item["masks"][k]
        out.append(entry)
    return out
