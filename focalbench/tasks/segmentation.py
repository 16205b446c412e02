"""Semantic segmentation: UPerNet + auxiliary FCN head on FocalNet (or any timm backbone), the paper's ADE20K recipe."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from focalbench.data.seg_transforms import IGNORE_INDEX, rescale_size
from focalbench.errors import ConfigError
from focalbench.models.heads import UPerNet
from focalbench.tasks.base import BaseTask
from focalbench.tasks.metrics import segmentation_scores
from focalbench.tasks.sliding_window import slide_inference


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationTask(BaseTask):
    """UPerNet (PPM + FPN decode head) on the backbone's four stages, with mmseg's auxiliary FCN head on stage 3
    (``aux_index`` 2) weighted by ``aux_weight``; cross-entropy ignoring label 255.

    Evaluation (validation, test, predict) takes lists of original-size images and predicts as mmseg's test
    pipeline: each image rescaled into ``test_scale`` × r for each r in ``test_scales`` (and flipped with
    ``test_flip``), ``whole``-image or ``slide`` inference (``crop_size`` windows every ``stride`` pixels, overlaps
    averaged), the logits resized back to the original size; several predictions average their softmax. Metrics
    compare that prediction with the original label map, from a confusion matrix summed over the whole split and
    synchronised under DDP: ``val_mIoU``, ``val_mAcc``, ``val_aAcc``, ``val_IoU/<class>`` (see
    :func:`segmentation_scores`) and ``val_loss`` (mean over images).

    The heads' BatchNorm becomes SyncBatchNorm (the paper's norm) when training on several GPUs; on CPU processes it
    stays BatchNorm, which torch cannot synchronise there.

    Args (besides :class:`BaseTask`'s):
        decode_channels / aux_channels: widths of the UPerHead (512 in the paper) and the FCN head (256).
        aux_weight: weight of the auxiliary loss (0.4); 0 builds no auxiliary head.
        aux_index: backbone level the auxiliary head reads (2 = stage 3, stride 16).
        pool_scales / dropout: the PPM's output sizes and the Dropout2d before both classifiers.
        class_weights: per-class cross-entropy weights (one per class), or None.
        inference: ``whole`` or ``slide`` (mmseg's ``test_cfg.mode``); ``crop_size``, ``stride`` for ``slide``.
        test_scale: (long, short) edge limits of the evaluation rescale (mmseg ``img_scale``, (2048, 512) for
            ADE20K); None keeps the original size.
        test_scales: ratios of ``test_scale`` (``[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]`` for the paper's multi-scale).
        test_flip: also predict on the horizontally flipped image.
        sync_batchnorm: convert BatchNorm to SyncBatchNorm under multi-GPU training.
    """

    monitor = "val_mIoU"
    checkpoint_filename = "step{step:06d}-mIoU{val_mIoU:.4f}"
    prediction_writer = "focalbench.callbacks.segmentation.SegmentationMaskWriter"

    def __init__(
        self,
        *,
        decode_channels: int = 512,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        aux_index: int = 2,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        class_weights: Sequence[float] | None = None,
        inference: Literal["whole", "slide"] = "whole",
        crop_size: int = 512,
        stride: int = 341,
        test_scale: tuple[int, int] | None = (2048, 512),
        test_scales: Sequence[float] = (1.0,),
        test_flip: bool = False,
        sync_batchnorm: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ building
    def configure_models(self) -> None:
        hp = self.hparams
        backbone = self.build_dense_backbone()
        self.model = UPerNet(
            backbone,
            hp.num_classes,
            channels=hp.decode_channels,
            pool_scales=hp.pool_scales,
            dropout=hp.dropout,
            aux_index=hp.aux_index if hp.aux_weight > 0 else None,
            aux_channels=hp.aux_channels,
        )

    def configure_losses(self) -> None:
        weights = self.hparams.class_weights
        if weights is not None and len(weights) != self.hparams.num_classes:
            raise ConfigError(f"model.class_weights has {len(weights)} entries for {self.hparams.num_classes} classes")
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float) if weights else None)

    def make_metrics(self) -> MetricCollection:
        # Pixel counts summed over the split (and over ranks under DDP); inputs are checked when the data is read.
        k = self.hparams.num_classes
        return MetricCollection(
            {
                "confusion": MulticlassConfusionMatrix(k, ignore_index=IGNORE_INDEX, validate_args=False),
                "loss": MeanMetric(),
            },
            compute_groups=False,
        )

    def summarize(self, computed: dict, stage: str) -> dict[str, Tensor]:
        """``mIoU``, ``mAcc``, ``aAcc``, ``loss`` and ``IoU/<class>`` (see :func:`segmentation_scores`)."""
        scores = segmentation_scores(computed["confusion"])
        tags = [name.replace(" ", "_").replace("/", "_") for name in self.class_names]
        return {
            **{key: scores[key] for key in ("mIoU", "mAcc", "aAcc")},
            "loss": computed["loss"],
            **{f"IoU/{tag}": iou for tag, iou in zip(tags, scores["IoU"])},
        }

    def backbone_module(self) -> nn.Module:
        return self.model.backbone

    def head_modules(self) -> list[nn.Module]:
        return [m for m in (self.model.decode_head, self.model.auxiliary_head) if m is not None]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self.trainer
        if stage != "fit" or not self.hparams.sync_batchnorm or trainer.world_size == 1:
            return  # only training normalises with batch statistics
        if trainer.strategy.root_device.type == "cpu":
            rank_zero_warn("BatchNorm stays per-process: torch's SyncBatchNorm does not run on CPU")
            return
        # Before the strategy wraps the model and before the optimizer is built, so both see the new modules.
        self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    # ------------------------------------------------------------------ inference
    def forward(self, images: Tensor) -> Tensor:
        return self.network()(images)["out"]

    def _log_probs(self, images: Tensor) -> Tensor:
        """Class log-probabilities at the images' size for a batch of same-size images (see the class docstring)."""
        hp = self.hparams
        size = tuple(images.shape[-2:])
        flips = (False, True) if hp.test_flip else (False,)
        single = len(hp.test_scales) == 1 and not hp.test_flip
        probs = 0.0
        for ratio in hp.test_scales:
            if hp.test_scale is None:
                scaled_size = (round(size[0] * ratio), round(size[1] * ratio))
            else:
                scaled_size = rescale_size(size, hp.test_scale, ratio)
            scaled = images if scaled_size == size else _resize(images, scaled_size)
            for flip in flips:
                x = scaled.flip(-1) if flip else scaled
                if hp.inference == "slide":
                    logits = slide_inference(self, x, hp.crop_size, hp.stride)
                else:
                    logits = self(x).float()
                logits = _resize(logits.flip(-1) if flip else logits, size)
                if single:
                    return logits.log_softmax(1)
                probs = probs + logits.softmax(1)
        return (probs / (len(hp.test_scales) * len(flips))).clamp(min=1e-30).log()

    def infer(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Per-image class log-probabilities ``[C, H, W]`` at each image's own size; images of one size run as a
        batch."""
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            by_size[tuple(image.shape[-2:])].append(i)
        out: list[Tensor] = [images[0]] * len(images)
        for indices in by_size.values():
            for i, log_probs in zip(indices, self._log_probs(torch.stack([images[i] for i in indices]))):
                out[i] = log_probs
        return out

    # ------------------------------------------------------------------ steps
    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy over the non-ignored pixels (weighted by ``class_weights``); 0 if all are ignored."""
        loss = F.cross_entropy(logits, target, self.class_weights, ignore_index=IGNORE_INDEX, reduction="sum")
        valid = (target != IGNORE_INDEX).to(loss.dtype)
        if self.class_weights is not None:
            valid = valid * self.class_weights[target.clamp(max=self.hparams.num_classes - 1)]
        return loss / valid.sum().clamp(min=1e-6)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        images, masks = batch["image"], batch["mask"].long()
        out = self.network()(images)
        losses = {"train_loss_decode": self._cross_entropy(out["out"], masks)}
        loss = losses["train_loss_decode"]
        if "aux" in out:
            losses["train_loss_aux"] = self._cross_entropy(out["aux"], masks)
            loss = loss + self.hparams.aux_weight * losses["train_loss_aux"]
        self.log_dict(losses, batch_size=len(images))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def evaluation_step(self, batch: dict, stage: str) -> list[Tensor]:
        """Predictions at the original size scored against the original masks; returned for the picture callback."""
        metrics = self.stage_metrics(stage)
        predictions = []
        for log_probs, mask in zip(self.infer(batch["image"]), batch["mask"]):
            mask = mask.long()[None]
            prediction = log_probs.argmax(0)
            metrics["confusion"].update(prediction[None], mask)
            # log-probabilities are their own log-softmax, so this is the cross-entropy of the averaged prediction
            metrics["loss"].update(self._cross_entropy(log_probs[None], mask))
            predictions.append(prediction)
        return predictions

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        masks = [log_probs.argmax(0).to(torch.uint8).cpu() for log_probs in self.infer(batch["image"])]
        return {"path": batch["path"], "mask": masks}
