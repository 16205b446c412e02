"""The plain tensor-in, tensors-out module each task exports, and the architecture behind a FocalNet task."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from focalbench.export.core import SINGLE_IMAGE
from focalbench.models.focalnet import FocalNet, FocalNetBackbone, _FocalNetTrunk
from focalbench.models.variants import VARIANTS


class SegmentationLogits(nn.Module):
    """UPerNet's ``{"out": logits}`` as a tensor: ``images [N, 3, H, W] -> logits [N, classes, H, W]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


class SingleImageDetector(nn.Module):
    """torchvision's detector on one image as a tuple: ``image [3, H, W] in [0, 1] -> boxes [N, 4] (xyxy, input
    pixels), labels [N] (1..K), scores [N]`` and, for Mask R-CNN, ``masks [N, 1, H, W]`` probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detections = self.model([image])[0]
        keys = ("boxes", "labels", "scores", "masks") if "masks" in detections else ("boxes", "labels", "scores")
        return tuple(detections[k] for k in keys)


class MaskFormerOutputs(nn.Module):
    """Mask2Former's raw outputs: ``images [N, 3, H, W] -> class_logits [N, Q, K+1]`` (the last class: no
    object) and ``mask_logits [N, Q, H, W]`` (upsampled to the input, as the task's :meth:`outputs`). Images
    are normalised as the task's data module gives them (instance mode: [0, 1], normalised here as the task does);
    the mode's post-processing is left to the caller (the model card says which)."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.model = task.model
        self.normalise = task.hparams.mode == "instance"
        self.register_buffer("mean", task.mean.clone(), persistent=False)
        self.register_buffer("std", task.std.clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalise:
            images = (images - self.mean) / self.std
        outputs = self.model(images)
        return outputs.class_queries_logits, self.model.mask_logits(outputs, images.shape[-2:])


class DINODetections(nn.Module):
    """DINO on one image as a tuple: ``image [3, H, W] in [0, 1] -> boxes [S, 4] (xyxy, input pixels), scores
    [S], labels [S] (1..K)``, the top ``num_select`` as the task's :meth:`detect` (its post-processing is a top-k of
    fixed size, so it is inside)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels, valid, _ = self.model.preprocess([image])
        (detections,) = self.model.postprocess(self.model(pixels, valid), [image.shape[-2:]])
        return detections["boxes"], detections["scores"], detections["labels"]


def exportable(task: nn.Module, kind: str) -> nn.Module:
    """The module an exporter traces for ``task``: the classifier, or one of the wrappers above."""
    if kind == "classification":
        return task.model
    wrappers = {
        "segmentation": lambda: SegmentationLogits(task.model),
        "detection": lambda: SingleImageDetector(task.model),
        "mask2former": lambda: MaskFormerOutputs(task),
        "dino": lambda: DINODetections(task.model),
    }
    return wrappers[kind]().eval()


def output_names(kind: str, task: nn.Module) -> list[str]:
    if kind == "detection":
        return ["boxes", "labels", "scores"] + (["masks"] if task.hparams.with_masks else [])
    if kind == "mask2former":
        return ["class_logits", "mask_logits"]
    if kind == "dino":
        return ["boxes", "scores", "labels"]
    return ["logits"]


def input_name(kind: str) -> str:
    return "image" if kind in SINGLE_IMAGE else "images"


def focalnet_trunk(task: nn.Module, kind: str) -> _FocalNetTrunk | None:
    """The task's FocalNet (the classifier, or the dense backbone); None for a timm backbone."""
    module = task.model if kind == "classification" else task.backbone_module()
    return module if isinstance(module, (FocalNet, FocalNetBackbone)) else None


def focalnet_args(task: nn.Module, trunk: _FocalNetTrunk) -> dict:
    """Every architecture argument of the task's FocalNet: the variant's, the config's overrides, the defaults."""
    hp = task.hparams
    defaults = {
        name: p.default for name, p in inspect.signature(_FocalNetTrunk.__init__).parameters.items() if name != "self"
    }
    if isinstance(trunk, FocalNetBackbone):
        defaults["stem_padding"] = 3  # FocalNetBackbone's own default, the official dense-task stem
    args = {**defaults, **VARIANTS[hp.backbone].kwargs, **(hp.backbone_kwargs or {})}
    args["depths"] = list(args["depths"])
    args["focal_levels"], args["focal_windows"] = list(trunk.focal_levels), list(trunk.focal_windows)  # per stage
    return args
