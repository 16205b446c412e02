"""Object detection and instance segmentation: Mask R-CNN (or box-only Faster R-CNN) with FPN from torchvision on
a FocalNet or timm backbone, COCO mAP over the whole split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from focalbench.data.coco import encode_mask
from focalbench.errors import ConfigError
from focalbench.tasks.base import BaseTask

# Extra arguments for torchvision's MaskRCNN / FasterRCNN (``rpn_pre_nms_top_n_test``, ``box_detections_per_img`` …).
DetectorKwargs = dict[str, int | float | bool | None]

# torchmetrics' result keys -> the names we log (COCO's AP, AP50, AP75, APs/m/l, AR@100).
SUMMARY_KEYS = {
    "map": "mAP",
    "map_50": "mAP_50",
    "map_75": "mAP_75",
    "map_small": "mAP_small",
    "map_medium": "mAP_medium",
    "map_large": "mAP_large",
    "mar_100": "mAR_100",
}


class CocoMeanAveragePrecision(MeanAveragePrecision):
    """torchmetrics' COCO mAP (pycocotools inside) with a DDP sync that allows ranks to hold different numbers of
    images: each rank's state lists travel whole (``all_gather_object``) and are concatenated in rank order.

    torchmetrics' own sync gathers the lists element by element, which needs the same count on every rank; an
    evaluation split that does not divide evenly (``UnrepeatedDistributedSampler``) would otherwise hang or fail.
    """

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        group = process_group or self.process_group
        states = {attr: getattr(self, attr) for attr in self._defaults}
        states = apply_to_collection(states, torch.Tensor, lambda t: t.cpu())
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, states, group=group)
        for attr in self._defaults:
            setattr(self, attr, [item for rank_states in gathered for item in rank_states[attr]])


def detection_metric(with_masks: bool = True) -> CocoMeanAveragePrecision:
    """COCO box (and mask) mAP with per-class AP, computed by pycocotools over everything passed to ``update``."""
    metric = CocoMeanAveragePrecision(
        iou_type=("bbox", "segm") if with_masks else "bbox", backend="pycocotools", class_metrics=True
    )
    metric.warn_on_many_detections = False  # torchvision keeps up to 100 per image, as COCO scores them
    return metric


def metric_inputs(
    detections: Sequence[dict], targets: Sequence[dict], with_masks: bool, mask_threshold: float = 0.5
) -> tuple[list[dict], list[dict]]:
    """torchvision's outputs and our targets as the metric takes them: masks boolean (N, H, W) at the original
    image size (mask probabilities thresholded), crowd regions and the annotations' areas passed through."""
    preds, gts = [], []
    for det, target in zip(detections, targets):
        pred = {"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"]}
        gt = {k: target[k] for k in ("boxes", "labels", "iscrowd", "area")}
        if with_masks:
            pred["masks"] = det["masks"][:, 0] > mask_threshold if det["masks"].ndim == 4 else det["masks"].bool()
            gt["masks"] = target["masks"].bool()
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def summarize_map(results: dict, class_names: Sequence[str], prefix: str, with_masks: bool) -> dict[str, torch.Tensor]:
    """``{prefix}{bbox|segm}_mAP`` …, and ``{prefix}{bbox|segm}_AP/<class>`` for classes with ground truth."""
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    out = {}
    for iou_type in iou_types:
        key = f"{iou_type}_" if len(iou_types) > 1 else ""
        for source, name in SUMMARY_KEYS.items():
            out[f"{prefix}{iou_type}_{name}"] = results[f"{key}{source}"]
        for label, ap in zip(results["classes"].tolist(), results[f"{key}map_per_class"].reshape(-1).tolist()):
            if 1 <= label <= len(class_names) and ap >= 0:  # -1: no ground truth of that class in the split
                out[f"{prefix}{iou_type}_AP/{class_names[label - 1]}"] = torch.tensor(ap)
    return out


def _outside(root: nn.Module, inner: nn.Module) -> list[nn.Module]:
    """The children of ``root`` (recursively) that do not contain ``inner``."""
    out = []
    for child in root.children():
        if child is inner:
            continue
        out += _outside(child, inner) if any(m is inner for m in child.modules()) else [child]
    return out


class DetectionTask(BaseTask):
    """Mask R-CNN + FPN (torchvision) over a dense backbone, or Faster R-CNN with ``with_masks: false``.

    The backbone is :func:`build_backbone`'s (FocalNet with per-stage norms; ``backbone_kwargs`` sets e.g.
    ``focal_windows: 9``; or any timm model); ``num_classes`` counts object categories, the background is added.
    Losses are torchvision's, logged one by one (``train_loss_classifier``, ``train_loss_mask`` …) and summed
    (``train_loss``). Validation: COCO mAP over the whole split (pycocotools through torchmetrics, gathered across
    DDP ranks): ``val_bbox_mAP``, ``val_bbox_mAP_50``, ``_75``, ``_small``, ``_medium``, ``_large``, ``mAR_100``,
    the same for ``segm``, and per-class ``val_bbox_AP/<class>``.

    Args (besides :class:`BaseTask`'s):
        with_masks: Mask R-CNN (boxes and masks) or Faster R-CNN (boxes only).
        min_size / max_size: the detector's resizing (shorter side, cap on the longer); a list of ``min_size``
            values picks one at random per training image (multi-scale) and evaluates at the last.
        mask_threshold: on torchvision's mask probabilities, for the metric and the outputs.
        detector_kwargs: other torchvision ``MaskRCNN`` arguments (proposal counts, score threshold …).
    """

    monitor = "val_bbox_mAP"
    checkpoint_filename = "epoch{epoch:03d}-bbox_mAP{val_bbox_mAP:.4f}"
    prediction_writer = "focalbench.callbacks.detection.CocoResultsWriter"

    def __init__(
        self,
        *,
        with_masks: bool = True,
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        mask_threshold: float = 0.5,
        detector_kwargs: DetectorKwargs | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ building
    def configure_models(self) -> None:
        from focalbench.models.detection import build_mask_rcnn

        hp = self.hparams
        backbone = self.build_dense_backbone()
        min_size = tuple(hp.min_size) if isinstance(hp.min_size, Sequence) else hp.min_size
        self.model = build_mask_rcnn(
            backbone,
            hp.num_classes + 1,
            with_masks=hp.with_masks,
            min_size=min_size,
            max_size=hp.max_size,
            **(hp.detector_kwargs or {}),
        )
        object.__setattr__(self, "_backbone", backbone)  # a reference, not a second registration of the module

    def make_metrics(self) -> CocoMeanAveragePrecision:
        return detection_metric(self.hparams.with_masks)

    def summarize(self, computed: dict, stage: str) -> dict[str, torch.Tensor]:
        return summarize_map(computed, self.class_names, "", self.hparams.with_masks)

    def backbone_module(self) -> nn.Module:
        return self._backbone

    def head_modules(self) -> list[nn.Module]:
        return _outside(self.model, self._backbone)  # FPN, RPN, RoI heads

    # ------------------------------------------------------------------ steps
    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Training (with ``targets``): torchvision's loss dict; otherwise detections at the input image sizes."""
        return self.network()(images, targets)

    def _require_masks(self, batch: dict) -> None:
        if self.hparams.with_masks and any("masks" not in t for t in batch["target"]):
            raise ConfigError("the data has no instance masks: set model.with_masks false (Faster R-CNN, boxes only)")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._require_masks(batch)
        keys = ("boxes", "labels", "masks") if self.hparams.with_masks else ("boxes", "labels")
        targets = [{k: t[k] for k in keys} for t in batch["target"]]
        return self.log_losses(self(batch["image"], targets), len(batch["image"]))

    def evaluation_step(self, batch: dict, stage: str) -> list[dict]:
        self._require_masks(batch)
        detections = self(batch["image"])
        metric_input = metric_inputs(detections, batch["target"], self.hparams.with_masks, self.hparams.mask_threshold)
        self.stage_metrics(stage).update(*metric_input)
        return detections  # drawn by the DetectionImages callback

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per image: ``file_name``, ``image_id``, ``boxes`` (xyxy), ``scores``, ``labels`` (1..K), and ``masks``
        as COCO RLE (compact, so a long prediction run does not hold full-size masks)."""
        out = []
        for det, file_name, image_id in zip(self(batch["image"]), batch["file_name"], batch["image_id"]):
            item = {
                "file_name": file_name,
                "image_id": image_id,
                **{k: det[k].cpu() for k in ("boxes", "scores", "labels")},
            }
            if "masks" in det:
                item["masks"] = [
                    encode_mask(m) for m in (det["masks"][:, 0] > self.hparams.mask_threshold).cpu().numpy()
                ]
            out.append(item)
        return out
