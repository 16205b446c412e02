"""Mask2Former on FocalNet (or any timm backbone): semantic, panoptic and instance segmentation in one task."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.ops import masks_to_boxes
from transformers import Mask2FormerImageProcessor

from focalbench.data.coco import encode_mask
from focalbench.data.seg_transforms import IGNORE_INDEX, rescale_size
from focalbench.errors import ConfigError
from focalbench.models.mask2former import Mask2Former
from focalbench.tasks.base import BaseTask
from focalbench.tasks.detection import detection_metric, metric_inputs, summarize_map
from focalbench.tasks.metrics import segmentation_scores
from focalbench.tasks.panoptic_quality import PanopticQuality
from focalbench.tasks.sliding_window import slide_inference

Mode = Literal["semantic", "panoptic", "instance"]
MONITOR = {"semantic": "mIoU", "panoptic": "PQ", "instance": "segm_mAP"}
WRITERS = {
    "semantic": "focalbench.callbacks.segmentation.SegmentationMaskWriter",
    "panoptic": "focalbench.callbacks.panoptic.PanopticWriter",
    "instance": "focalbench.callbacks.detection.CocoResultsWriter",
}
GROUPS = ("", "_things", "_stuff")


def semantic_targets(mask: Tensor) -> tuple[Tensor, Tensor]:
    """One binary mask per class present in a ``H×W`` class map (255 = ignored: in no mask) and the class ids."""
    classes = mask.unique()
    classes = classes[classes != IGNORE_INDEX].long()
    return (mask[None] == classes[:, None, None]).float(), classes


def panoptic_targets(segments: Tensor, info: Sequence[dict]) -> tuple[Tensor, Tensor]:
    """One binary mask per non-crowd segment that has pixels in ``segments`` (an ``H×W`` id map) and its class."""
    kept = [s for s in info if not s.get("iscrowd")]
    masks = torch.stack([segments == s["id"] for s in kept]) if kept else segments.new_zeros((0, *segments.shape))
    classes = torch.tensor([s["category_id"] for s in kept], dtype=torch.long, device=segments.device)
    present = masks.flatten(1).any(1)
    return masks[present].float(), classes[present]


def semantic_scores(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Mask2Former's semantic inference: per class and pixel, the sum over queries of the class probability
    (no-object left out) times the mask probability, ``[N, K, h, w]`` from ``[N, Q, K+1]`` and ``[N, Q, h, w]``."""
    return torch.einsum("nqc,nqhw->nchw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())


def pad_batch(images: Sequence[Tensor], masks: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Images of different sizes padded right/bottom to a common size (0), their target masks with them (0)."""
    h = max(int(i.shape[-2]) for i in images)
    w = max(int(i.shape[-1]) for i in images)
    pad = [(0, w - int(i.shape[-1]), 0, h - int(i.shape[-2])) for i in images]
    return torch.stack([F.pad(i, p) for i, p in zip(images, pad)]), [F.pad(m, p) for m, p in zip(masks, pad)]


def instance_inference(outputs: SimpleNamespace, size: Sequence[int], threshold: float = 0.0) -> dict[str, Tensor]:
    """Mask2Former's instance inference (the official ``instance_inference``) for one image: the top Q
    (query, class) pairs by class probability, masks = mask logits > 0 after a bilinear resize to ``size``, score =
    class probability x mean mask probability inside the mask; boxes enclose the masks; empty masks and scores
    below ``threshold`` are dropped; labels 1..K as the detection data's.

    transformers' ``post_process_instance_segmentation`` is not used: it binarises the masks on a fixed 384 x 384
    grid and resizes them to the image by nearest-neighbour sampling, which moves every edge by up to a pixel
    (IoU 0.89-0.91 for exact 12-24 px squares, mask AP 0.85 instead of 1.0 in the tests)."""
    logits, masks = outputs.class_queries_logits[0], outputs.masks_queries_logits[0]
    queries, k = logits.shape[0], logits.shape[1] - 1
    probs = logits.softmax(-1)[:, :-1]
    scores, index = probs.flatten().topk(min(queries, probs.numel()))
    labels, query = index % k, index // k
    logits_at_size = F.interpolate(masks[query][None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    binary = logits_at_size[0] > 0
    area = binary.flatten(1).sum(1)
    mask_scores = (logits_at_size[0].sigmoid() * binary).flatten(1).sum(1) / (area + 1e-6)
    scores = scores * mask_scores
    keep = (area > 0) & (scores >= threshold)
    binary = binary[keep]
    boxes = masks_to_boxes(binary).float() if len(binary) else torch.zeros((0, 4), device=binary.device)
    boxes[:, 2:] += 1  # pixel edges, as COCO boxes: x2 = last column + 1
    return {
        "masks": binary,
        "boxes": boxes,
        "scores": scores[keep],
        "labels": labels[keep] + 1,
    }


class Mask2FormerTask(BaseTask):
    """Mask2Former (transformers' implementation, :mod:`focalbench.models.mask2former`) on a dense backbone.

    ``mode`` decides the targets, the post-processing and the metrics:

    - ``semantic`` (data: :class:`~focalbench.data.segmentation.SegmentationDataModule`): one target mask per class
      present (255 ignored); Mask2Former's semantic inference (:func:`semantic_scores`, as transformers'
      ``post_process_semantic_segmentation`` computes it, but on the whole image or, with ``inference: slide``, on
      sliding windows averaged as for UPerNet (:func:`slide_inference`), the scores then resized to the original
      size; transformers' function returns only the argmax and goes through a fixed 384 x 384 grid); mIoU, mAcc,
      aAcc and per-class IoU from a confusion matrix over the split (:func:`segmentation_scores`, as the UPerNet
      task).
    - ``panoptic`` (:class:`~focalbench.data.panoptic.PanopticDataModule`): one mask per non-crowd segment;
      ``post_process_panoptic_segmentation`` with ``object_mask_threshold`` 0.8 and ``overlap_threshold`` 0.8, stuff
      classes fused per image; PQ, SQ, RQ (all / things / stuff, per class) as the COCO panoptic evaluation
      (:class:`PanopticQuality`). Unlike the reference ``panoptic_inference``, transformers keeps a segment only
      where score x mask probability reaches 0.5 and gives every pixel to a segment (no predicted void); left as is.
    - ``instance`` (:class:`~focalbench.data.detection.DetectionDataModule`, 0..1 images normalised here): one mask
      per non-crowd instance; Mask2Former's instance inference (:func:`instance_inference`); COCO box and mask AP
      (boxes from the masks).

    Evaluation runs each image at ``test_scale`` (keep-ratio rescale into the (long, short) box, None = as is) and
    scores the prediction at the original size. Metrics are summed over the split and synchronised across ranks,
    logged once per epoch as ``val_<name>``. The backbone trains at ``backbone_lr_mult`` × the lr (0.1 officially).

    Args (besides :class:`BaseTask`'s):
        mode: ``semantic``, ``panoptic`` or ``instance``.
        hidden_dim / num_queries / decoder_layers / encoder_layers / num_attention_heads / dim_feedforward /
            encoder_feedforward_dim / train_num_points: Mask2Former's sizes (256 / 100 / 10 = 9 + the initial
            prediction / 6 / 8 / 2048 / 1024 / 12544 officially); small values for tests and demos.
        class_weight / mask_weight / dice_weight / no_object_weight: loss weights (2 / 5 / 5 / 0.1 officially,
            the matcher's costs too).
        backbone_lr_mult: lr multiplier of the backbone's parameter groups.
        test_scale: evaluation rescale box (ADE20K (2048, 512), COCO (1333, 800)).
        inference / crop_size / stride: semantic mode: ``whole`` image or ``slide`` (``crop_size`` windows every
            ``stride`` pixels of the rescaled image, mmseg's 512 / 341 for ADE20K).
        object_mask_threshold / overlap_threshold: panoptic post-processing (query score, kept-area fraction).
        instance_score_threshold: instance post-processing: minimum score of a kept instance.
        thing_classes: names of the thing classes (panoptic); by default read from the data module's ``things``.
    """

    def __init__(
        self,
        *,
        mode: Mode = "semantic",
        hidden_dim: int = 256,
        num_queries: int = 100,
        decoder_layers: int = 10,
        encoder_layers: int = 6,
        num_attention_heads: int = 8,
        dim_feedforward: int = 2048,
        encoder_feedforward_dim: int = 1024,
        train_num_points: int = 12544,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        backbone_lr_mult: float = 0.1,
        test_scale: tuple[int, int] | None = (2048, 512),
        inference: Literal["whole", "slide"] = "whole",
        crop_size: int = 512,
        stride: int = 341,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        instance_score_threshold: float = 0.0,
        thing_classes: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(backbone_lr_mult=backbone_lr_mult, **kwargs)
        # post-processing only: building it reads no files
        self.processor = Mask2FormerImageProcessor()

    # ------------------------------------------------------------------ building
    def configure_models(self) -> None:
        hp = self.hparams
        sizes = {
            key: hp[key]
            for key in (
                "hidden_dim",
                "num_queries",
                "decoder_layers",
                "encoder_layers",
                "num_attention_heads",
                "dim_feedforward",
                "encoder_feedforward_dim",
                "train_num_points",
                "class_weight",
                "mask_weight",
                "dice_weight",
                "no_object_weight",
            )
        }
        self.model = Mask2Former(self.build_dense_backbone(), hp.num_classes, **sizes)
        mean, std = self.normalization  # instance mode reads the detection data's [0, 1] images
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def make_metrics(self) -> Metric | MetricCollection:
        """A fresh metric of the mode (see the class docstring); semantic mode's confusion matrix under the key the
        segmentation pictures read (``confusion``)."""
        k = self.hparams.num_classes
        if self.hparams.mode == "semantic":
            return MetricCollection(
                {"confusion": MulticlassConfusionMatrix(k, ignore_index=IGNORE_INDEX, validate_args=False)}
            )
        if self.hparams.mode == "panoptic":
            return PanopticQuality(self.things())
        return detection_metric(with_masks=True)

    def things(self) -> list[bool]:
        """Per class, whether it is a thing: ``thing_classes`` by name, else the data module's ``things``, else all."""
        names = self.hparams.thing_classes
        if names is not None:
            unknown = set(names) - set(self.class_names)
            if unknown:
                raise ConfigError(f"model.thing_classes {sorted(unknown)} are not among the classes {self.class_names}")
            return [name in set(names) for name in self.class_names]
        data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        given = getattr(data, "things", None)
        return list(given) if given is not None else [True] * self.hparams.num_classes

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.mode == "panoptic":  # the data module is known now
            things = torch.tensor(self.things())
            for metric in self.eval_metrics.values():
                metric.things = things.to(metric.things.device)

    def backbone_module(self) -> nn.Module:
        return self.model.backbone

    def head_modules(self) -> list[nn.Module]:
        return self.model.head_modules()

    @property
    def monitor(self) -> str:
        return f"val_{MONITOR[self.hparams.mode]}"

    @property
    def checkpoint_filename(self) -> str:
        name = MONITOR[self.hparams.mode]
        return f"step{{step:06d}}-{name}{{val_{name}:.4f}}"

    @property
    def prediction_writer(self) -> str:
        return WRITERS[self.hparams.mode]

    # ------------------------------------------------------------------ inputs and targets
    def _normalise(self, image: Tensor) -> Tensor:
        # detection data comes as 0..1 images (torchvision's detectors normalise inside); the others are normalised
        return (image - self.mean) / self.std if self.hparams.mode == "instance" else image

    def training_targets(self, batch: dict) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The batch as padded images, per-image binary masks and class ids (0..K-1)."""
        mode = self.hparams.mode
        if mode == "semantic":
            pairs = [semantic_targets(m) for m in batch["mask"]]
        elif mode == "panoptic":
            pairs = [panoptic_targets(s, info) for s, info in zip(batch["segments"], batch["segments_info"])]
        else:
            pairs = []
            for t in batch["target"]:
                keep = t["iscrowd"] == 0
                pairs.append((t["masks"][keep].float(), t["labels"][keep] - 1))
        images = [self._normalise(i) for i in batch["image"]]
        images, masks = pad_batch(images, [m for m, _ in pairs])
        return images, masks, [c for _, c in pairs]

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        images, masks, classes = self.training_targets(batch)
        loss = self.network()(images, masks, classes).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def scaled_input(self, image: Tensor) -> Tensor:
        """One image normalised (instance mode) and rescaled into ``test_scale``: ``[1, 3, h, w]``."""
        image = self._normalise(image)[None]
        size = tuple(image.shape[-2:])
        if self.hparams.test_scale is not None:
            scaled = rescale_size(size, self.hparams.test_scale)
            if scaled != size:
                image = F.interpolate(image, size=scaled, mode="bilinear", align_corners=False)
        return image

    def outputs(self, images: Tensor) -> SimpleNamespace:
        """Class logits ``[N, Q, K+1]`` and mask logits ``[N, Q, h, w]`` at the input's size (padding cropped),
        ready for transformers' post-processing."""
        outputs = self.network()(images)
        masks = Mask2Former.mask_logits(outputs, images.shape[-2:])
        return SimpleNamespace(class_queries_logits=outputs.class_queries_logits.float(), masks_queries_logits=masks)

    def semantic_scores(self, images: Tensor) -> Tensor:
        """Per-class scores ``[N, K, h, w]`` at the input's size (:func:`semantic_scores`)."""
        outputs = self.outputs(images)
        return semantic_scores(outputs.class_queries_logits, outputs.masks_queries_logits)

    def infer_image(self, image: Tensor) -> Any:
        """The mode's prediction for one image at its own size (see the class docstring)."""
        hp, size = self.hparams, tuple(int(s) for s in image.shape[-2:])
        scaled = self.scaled_input(image)
        if hp.mode == "semantic":
            if hp.inference == "slide":
                scores = slide_inference(self.semantic_scores, scaled, hp.crop_size, hp.stride)
            else:
                scores = self.semantic_scores(scaled)
            return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
        outputs = self.outputs(scaled)
        if hp.mode == "panoptic":
            stuff = {k for k, thing in enumerate(self.stage_metrics("val").things.tolist()) if not thing}
            return self.processor.post_process_panoptic_segmentation(
                outputs,
                threshold=hp.object_mask_threshold,
                overlap_mask_area_threshold=hp.overlap_threshold,
                label_ids_to_fuse=stuff,
                target_sizes=[size],
            )[0]
        return instance_inference(outputs, size, hp.instance_score_threshold)

    def infer(self, images: Sequence[Tensor]) -> list[Any]:
        """Per image the post-processed prediction at the image's own size."""
        return [self.infer_image(image) for image in images]

    def evaluation_step(self, batch: dict, stage: str) -> list[Any]:
        """Predict every image, update the stage's metric, return the predictions (the picture callbacks')."""
        metric, mode = self.stage_metrics(stage), self.hparams.mode
        predictions = self.infer(batch["image"])
        if mode == "semantic":
            for prediction, mask in zip(predictions, batch["mask"]):
                metric["confusion"].update(prediction[None], mask.long()[None])
        elif mode == "panoptic":
            for prediction, segments, info in zip(predictions, batch["segments"], batch["segments_info"]):
                pred_info = [{"id": s["id"], "category_id": s["label_id"]} for s in prediction["segments_info"]]
                metric.update(prediction["segmentation"], pred_info, segments, info)
        else:
            metric.update(*metric_inputs(predictions, batch["target"], with_masks=True))
        return predictions

    def summarize(self, computed: Any, stage: str) -> dict[str, Tensor]:
        """The metric's result as flat scalars without the stage prefix."""
        tags = [name.replace(" ", "_").replace("/", "_") for name in self.class_names]
        mode = self.hparams.mode
        if mode == "semantic":
            scores = segmentation_scores(computed["confusion"])
            out = {key: scores[key] for key in ("mIoU", "mAcc", "aAcc")}
            return out | {f"IoU/{tag}": iou for tag, iou in zip(tags, scores["IoU"])}
        if mode == "panoptic":
            out = {f"{q}{group}": computed[f"{q}{group}"] for q in ("PQ", "SQ", "RQ") for group in GROUPS}
            per_class = {f"PQ/{tag}": pq for tag, pq in zip(tags, computed["PQ_class"]) if not pq.isnan()}
            return out | per_class
        return summarize_map(computed, self.class_names, "", with_masks=True)

    def predict_step(self, batch: dict, batch_idx: int) -> Any:
        predictions = self.infer(batch["image"])
        mode = self.hparams.mode
        if mode == "semantic":
            return {"path": batch["path"], "mask": [p.to(torch.uint8).cpu() for p in predictions]}
        if mode == "panoptic":
            panoptic = [{**p, "segmentation": p["segmentation"].cpu()} for p in predictions]
            return {"path": batch["path"], "panoptic": panoptic}
        return [
            {
                "file_name": file_name,
                "image_id": image_id,
                **{k: p[k].cpu() for k in ("boxes", "scores", "labels")},
                "masks": [encode_mask(m) for m in p["masks"].cpu().numpy()],
            }
            for p, file_name, image_id in zip(predictions, batch["file_name"], batch["image_id"])
        ]
