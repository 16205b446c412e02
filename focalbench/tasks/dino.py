"""Object detection with DINO (:mod:`focalbench.models.dino`) on a FocalNet or timm backbone: the same data,
COCO box mAP over the whole split, predict JSON and TensorBoard pictures as the Mask R-CNN task."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics import Metric

from focalbench.models.dino import DINO, DINOCriterion
from focalbench.tasks.base import BaseTask
from focalbench.tasks.detection import detection_metric, metric_inputs, summarize_map

# Loss names (DINO's) -> the group they are logged in: the last layer's three losses on their own, the rest summed.
LOSS_GROUPS = {"_dn": "dn", "_enc": "enc"}


def loss_group(name: str) -> str:
    """``loss_ce`` -> ``loss_ce``; ``loss_bbox_3`` -> ``loss_aux``; ``loss_giou_dn_2`` -> ``loss_dn``; …"""
    for marker, group in LOSS_GROUPS.items():
        if marker in name:
            return f"loss_{group}"
    return name if name.count("_") == 1 else "loss_aux"


class DINOTask(BaseTask):
    """DINO (DETR with Improved DeNoising Anchor Boxes) over a dense backbone.

    Images come as the Mask R-CNN task takes them (0..1 CHW at any size, ``boxes`` xyxy + ``labels`` 1..K); the
    model resizes (``min_size`` / ``max_size``), normalises, pads and masks the padding, and trains on boxes as
    cxcywh in [0, 1] of each unpadded image. Losses are logged as ``train_loss_ce`` / ``_bbox`` / ``_giou`` (last
    decoder layer, weighted), ``train_loss_aux`` (earlier layers), ``train_loss_enc`` (encoder proposals),
    ``train_loss_dn`` (denoising), and their sum ``train_loss``. Evaluation: COCO box mAP over the whole split
    (``val_bbox_mAP`` …, per class ``val_bbox_AP/<class>``).

    Args (besides :class:`BaseTask`'s):
        hidden_dim / encoder_layers / decoder_layers / num_heads / ffn_dim / num_points: the deformable transformer
            (DINO-4scale: 256, 6, 6, 8, 2048, 4).
        num_levels: 4 (backbone strides 8-32 + 64, DINO-4scale) or 5 (4-32 + 64, DINO-5scale).
        num_queries: matching queries (900); num_dn_queries: the denoising budget (100; 0 = no CDN).
        label_noise_ratio / box_noise_scale: CDN noise (0.5 / 0.4, the official DINO-4scale config).
        min_size / max_size: resizing (a list of shorter sides picks at random per training image; the last is used
            for evaluation); num_select: detections kept per image (300).
        backbone_lr_mult: the backbone's lr relative to the rest (DINO: 1e-5 / 1e-4 = 0.1).
    """

    monitor = "val_bbox_mAP"
    checkpoint_filename = "epoch{epoch:03d}-bbox_mAP{val_bbox_mAP:.4f}"
    prediction_writer = "focalbench.callbacks.detection.CocoResultsWriter"

    def __init__(
        self,
        *,
        hidden_dim: int = 256,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_points: int = 4,
        num_levels: int = 4,
        num_queries: int = 900,
        num_dn_queries: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 0.4,
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        num_select: int = 300,
        backbone_lr_mult: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(backbone_lr_mult=backbone_lr_mult, **kwargs)

    # ------------------------------------------------------------------ building
    def configure_models(self) -> None:
        hp = self.hparams
        # Only the maps DINO reads (4-scale: strides 8-32), as the official FocalNet-DINO's out_indices (1, 2, 3):
        # an unused output norm would get no gradient, which DDP refuses.
        self.model = DINO(
            self.build_dense_backbone(out_indices=range(1 - hp.num_levels, 0)),
            hp.num_classes,
            hidden_dim=hp.hidden_dim,
            encoder_layers=hp.encoder_layers,
            decoder_layers=hp.decoder_layers,
            num_heads=hp.num_heads,
            ffn_dim=hp.ffn_dim,
            num_points=hp.num_points,
            num_levels=hp.num_levels,
            num_queries=hp.num_queries,
            num_dn_queries=hp.num_dn_queries,
            label_noise_ratio=hp.label_noise_ratio,
            box_noise_scale=hp.box_noise_scale,
            min_size=hp.min_size,
            max_size=hp.max_size,
            num_select=hp.num_select,
        )

    def configure_losses(self) -> None:
        self.criterion = DINOCriterion(self.hparams.num_classes)

    def make_metrics(self) -> Metric:
        return detection_metric(with_masks=False)

    def backbone_module(self) -> nn.Module:
        return self.model.backbone

    def head_modules(self) -> list[nn.Module]:
        return [module for name, module in self.model.named_children() if name != "backbone"]

    # ------------------------------------------------------------------ steps
    def detect(self, images: Sequence[torch.Tensor]) -> list[dict]:
        """Per image the top ``num_select`` detections: ``boxes`` xyxy in its pixels, ``scores``, ``labels`` 1..K."""
        pixels, valid, _ = self.model.preprocess(list(images))
        outputs = self.network()(pixels, valid)
        return self.model.postprocess(outputs, [image.shape[-2:] for image in images])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch["target"]]
        pixels, valid, normalised = self.model.preprocess(batch["image"], targets)
        losses = self.criterion(self.network()(pixels, valid, normalised), normalised)
        groups: dict[str, torch.Tensor] = {}
        for name, value in losses.items():
            groups[loss_group(name)] = groups.get(loss_group(name), 0) + value
        return self.log_losses(groups, len(batch["image"]))

    def evaluation_step(self, batch: dict, stage: str) -> list[dict]:
        detections = self.detect(batch["image"])
        self.stage_metrics(stage).update(*metric_inputs(detections, batch["target"], with_masks=False))
        return detections  # drawn by the DetectionImages callback

    def summarize(self, computed: dict, stage: str) -> dict[str, torch.Tensor]:
        return summarize_map(computed, self.class_names, "", with_masks=False)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per image: ``file_name``, ``image_id``, ``boxes`` (xyxy), ``scores``, ``labels`` (1..K)."""
        return [
            {"file_name": name, "image_id": image_id, **{k: det[k].cpu() for k in ("boxes", "scores", "labels")}}
            for det, name, image_id in zip(self.detect(batch["image"]), batch["file_name"], batch["image_id"])
        ]
