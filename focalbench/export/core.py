"""What every export format shares: the task's kind, its preprocessing, the example inputs, the output check."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from focalbench.models.focalnet_block import FocalNetBlock


class ExportError(ValueError):
    """An export that cannot be made or that does not reproduce the model; the message is one line saying why."""


@dataclass
class ExportJob:
    """One export: the trained task, where to write, and what the model card reports."""

    task: nn.Module  # a focalbench BaseTask with its weights loaded
    kind: str  # one of KINDS
    output: Path
    preprocessing: dict  # mean, std, input_size, crop_pct, interpolation (or the detector's resizing)
    checkpoint: dict = field(default_factory=dict)  # path, epoch, step, monitor, best score
    notes: list[str] = field(default_factory=list)  # what the card says about this export (dynamic axes, checks)
    files: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # lines the card's usage example needs before loading

    @property
    def class_names(self) -> list[str]:
        return list(self.task.class_names)


# The kinds of task export knows, by the task class that makes them: UPerNet is "segmentation", torchvision's
# Mask R-CNN / Faster R-CNN "detection".
KINDS = {
    "classification": "focalbench.tasks.classification.ClassificationTask",
    "segmentation": "focalbench.tasks.segmentation.SegmentationTask",
    "detection": "focalbench.tasks.detection.DetectionTask",
    "mask2former": "focalbench.tasks.mask2former.Mask2FormerTask",
    "dino": "focalbench.tasks.dino.DINOTask",
}
# Kinds whose exported module takes one image (3×H×W in [0, 1]) and resizes and normalises it itself; their
# boxes are in input pixels, so their checks allow a relative error of PIXEL_RTOL besides the absolute tolerance.
SINGLE_IMAGE = ("detection", "dino")
PIXEL_RTOL = 1e-6


def task_kind(task: nn.Module) -> str:
    import importlib

    for kind, path in KINDS.items():
        module, name = path.rsplit(".", 1)
        if isinstance(task, getattr(importlib.import_module(module), name)):
            return kind
    known = ", ".join(path.rsplit(".", 1)[1] for path in KINDS.values())
    raise ExportError(f"export knows the tasks {known}, not {type(task).__name__}")


def preprocessing(task: nn.Module, kind: str, datamodule: object | None) -> dict:
    """What a user of the exported model must do to an image first, as the data module did in training."""
    size = int(getattr(datamodule, "image_size", 0) or 224)
    if kind in SINGLE_IMAGE:
        detector = task.model.transform  # torchvision's resizing and normalisation, inside the model
        return {
            "input": "one 3×H×W float RGB image in [0, 1]; the model resizes and normalises it itself",
            "mean": tuple(float(v) for v in detector.image_mean),
            "std": tuple(float(v) for v in detector.image_std),
            "min_size": int(detector.min_size[-1]),
            "max_size": int(detector.max_size),
            "input_size": (3, int(detector.min_size[-1]), int(detector.min_size[-1])),  # what the checks feed it
        }
    out = {
        "mean": tuple(IMAGENET_DEFAULT_MEAN),
        "std": tuple(IMAGENET_DEFAULT_STD),
        "input_size": (3, size, size),
        "interpolation": "bicubic" if kind == "classification" else "bilinear",
    }
    if kind == "mask2former":
        out["mean"], out["std"] = (tuple(round(float(v), 6) for v in t.flatten()) for t in (task.mean, task.std))
        out["normalised_inside"] = task.hparams.mode == "instance"  # the task normalises detection data itself
        out["test_scale"] = task.hparams.test_scale
        if task.hparams.mode == "panoptic":  # the classes the post-processing fuses per image
            given = getattr(datamodule, "things", None) if task.hparams.thing_classes is None else None
            things = list(given) if given is not None else task.things()
            out["stuff"] = [k for k, thing in enumerate(things) if not thing]
    if kind == "classification":
        cfg = getattr(task.model, "pretrained_cfg", None) or {}  # a timm backbone's own normalisation, if any
        out["mean"], out["std"] = tuple(cfg.get("mean", out["mean"])), tuple(cfg.get("std", out["std"]))
        out["crop_pct"] = float(getattr(datamodule, "crop_pct", 0.875))
    return out


@contextmanager
def plain_inference(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode with FocalNet's fused oneDNN path off (it calls oneDNN directly; exporters need
    plain ATen ops); the previous mode and fused settings come back afterwards."""
    blocks = [m for m in module.modules() if isinstance(m, FocalNetBlock)]
    fused = [block.fused_inference for block in blocks]
    training = module.training
    for block in blocks:
        block.fused_inference = False
    module.eval()
    try:
        yield module
    finally:
        module.train(training)
        for block, enable in zip(blocks, fused):
            block.fused_inference = enable


def example_images(kind: str, preprocessing: dict, seed: int = 0) -> list[torch.Tensor]:
    """Two inputs of different sizes to check an export with: a batch of 2 at the training size and a batch of 3
    one stride-32 step larger in height (classification, segmentation, Mask2Former), or single [0, 1] images
    (detection, DINO).

    Sizes are multiples of 32 (see the dynamic shapes), at least 64: torch.export specialises a size of one
    32-pixel step (1 is a special value for symbolic shapes), which would pin the exported image size."""
    generator = torch.Generator().manual_seed(seed)
    _, size, _ = preprocessing["input_size"]
    size = max(64, -(-size // 32) * 32)
    if kind in SINGLE_IMAGE:
        return [torch.rand(3, size, size, generator=generator), torch.rand(3, size + 32, size, generator=generator)]
    return [torch.randn(2, 3, size, size, generator=generator), torch.randn(3, 3, size + 32, size, generator=generator)]


def check_close(
    what: str, got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], atol: float, rtol: float = 0.0
) -> float:
    """The largest absolute difference between two lists of outputs; an :class:`ExportError` where one exceeds
    ``atol + rtol × |PyTorch's value|`` (``rtol`` for pixel coordinates: a 1333-pixel box coordinate's float32
    step is already 1.2e-4)."""
    if len(got) != len(want):
        raise ExportError(f"{what}: {len(got)} outputs, the PyTorch model gives {len(want)}")
    worst, excess = 0.0, 0.0
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
        if a.shape != b.shape:
            raise ExportError(f"{what}: output {i} has shape {tuple(a.shape)}, PyTorch's {tuple(b.shape)}")
        if a.numel():
            difference = (a - b).abs()
            worst = max(worst, difference.max().item())
            excess = max(excess, (difference - atol - rtol * b.abs()).max().item())
    if excess > 0:
        relative = f" + {rtol:.0e} × |value|" if rtol else ""
        raise ExportError(f"{what}: outputs differ from PyTorch's by {worst:.2e} (tolerance {atol:.0e}{relative})")
    return worst
