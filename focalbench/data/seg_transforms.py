"""Albumentations pipelines for semantic segmentation: mmseg's ADE20K training pipeline and the evaluation transform.

mmseg (``configs/_base_/datasets/ade20k.py``, which the FocalNet configs use) and what does each step here::

    Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)) RescaleToRange
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75)  CatMaxRatioCrop
    RandomFlip(prob=0.5)                                  A.HorizontalFlip
    PhotoMetricDistortion()                               A.RandomBrightnessContrast, ColorJitter, HueSaturationValue
    Normalize(ImageNet mean, std)                         A.Normalize
    Pad(size=(512, 512), pad_val=0, seg_pad_val=255)      A.PadIfNeeded(top_left, fill=0, fill_mask=255)

Albumentations has no keep-ratio rescale into a (long, short) box with a random ratio, nor a crop that avoids
one-class crops, so those two are written here; the rest is albumentations' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from focalbench.data.transforms import SeededTransform

IGNORE_INDEX = 255  # mask value of pixels that count in neither the loss nor the metrics


def rescale_size(size: Sequence[int], scale: Sequence[int], ratio: float = 1.0) -> tuple[int, int]:
    """(h, w) after mmcv's keep-ratio ``imrescale`` into the box ``scale`` x ``ratio`` (``scale`` = (long, short)
    edge limits, in either order): factor = min(long / max(h, w), short / min(h, w))."""
    h, w = size
    long_edge, short_edge = int(max(scale) * ratio), int(min(scale) * ratio)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


class RescaleToRange(A.DualTransform):
    """mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)``: draw r ~ U(ratio_range) and
    rescale the image (bilinear) and mask (nearest) to fit the box ``scale`` x r (see :func:`rescale_size`)."""

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float] = (0.5, 2.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        ratio = self.py_random.uniform(*self.ratio_range)
        return {"size": rescale_size(params["shape"][:2], self.scale, ratio)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range")


class CatMaxRatioCrop(A.DualTransform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: a random ``height`` x ``width`` crop (smaller where the image
    is), redrawn up to ``tries`` times while one class covers ``cat_max_ratio`` or more of its labelled pixels
    (ignored pixels not counted) or it holds a single class; the last draw is kept if none qualifies."""

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        tries: int = 10,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.height, self.width = height, width
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.tries = tries

    def _acceptable(self, crop: np.ndarray) -> bool:
        counts = np.bincount(crop.ravel(), minlength=256)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        mask = data.get("mask")
        for _ in range(self.tries):
            y = self.py_random.randint(0, max(h - self.height, 0))
            x = self.py_random.randint(0, max(w - self.width, 0))
            if mask is None or self.cat_max_ratio >= 1.0:
                break
            if self._acceptable(mask[y : y + self.height, x : x + self.width]):
                break
        return {"y": y, "x": x}

    def apply(self, img: np.ndarray, y: int, x: int, **params) -> np.ndarray:
        return img[y : y + self.height, x : x + self.width]

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index", "tries")


def photometric_distortion() -> list[A.BasicTransform]:
    """mmseg ``PhotoMetricDistortion`` from albumentations parts, each applied with probability 0.5: brightness
    +-32 (additive), contrast x[0.5, 1.5], saturation x[0.5, 1.5], hue +-18 (OpenCV's 0-180 hue units)."""
    return [
        A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0.0, brightness_by_max=True, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.5, p=0.5),
        A.ColorJitter(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(0.5, 1.5), hue=(0.0, 0.0), p=0.5),
        A.HueSaturationValue(hue_shift_limit=18, sat_shift_limit=0, val_shift_limit=0, p=0.5),
    ]


def segmentation_train_transform(
    crop_size: int,
    *,
    scale: Sequence[int] = (2048, 512),
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    hflip: float = 0.5,
    photometric: bool = True,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> SeededTransform:
    """The mmseg ADE20K training pipeline (see the module docstring); ``image`` HxWx3 uint8 and ``mask`` HxW uint8
    in, a normalised 3 x crop x crop float tensor and a crop x crop uint8 mask (255 in the padding) out."""
    steps: list[A.BasicTransform] = [
        RescaleToRange(scale, ratio_range),
        CatMaxRatioCrop(crop_size, crop_size, cat_max_ratio),
        A.HorizontalFlip(p=hflip),
    ]
    if photometric:
        steps += photometric_distortion()
    steps += [
        A.Normalize(mean=mean, std=std),
        A.PadIfNeeded(
            min_height=crop_size,
            min_width=crop_size,
            position="top_left",  # mmseg pads bottom / right
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        ),
        ToTensorV2(),
    ]
    return SeededTransform(A.Compose(steps))


def segmentation_eval_transform(
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN, std: tuple[float, ...] = IMAGENET_DEFAULT_STD
) -> A.Compose:
    """Normalisation only: the image keeps its original size, as does the mask it is scored against. The task
    rescales the image to its test scale(s) and the prediction back (mmseg's ``MultiScaleFlipAug`` + ``rescale``)."""
    return A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])
