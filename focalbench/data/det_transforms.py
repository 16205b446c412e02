"""DETR's random-crop augmentation branch (used by Deformable DETR and DINO) as albumentations steps.

DETR trains on ``RandomSelect(RandomResize(scales), Compose([RandomResize([400, 500, 600]), RandomSizeCrop(384,
600), RandomResize(scales)]))``: half of the images are first resized (shorter side 400/500/600) and cropped to a
random 384-600 pixel window before the multi-scale resize. Here the crop branch is the two first steps; the final
multi-scale resize is the detector's (it resizes every image anyway). Boxes follow the crop; boxes cut out are
dropped by the pipeline's ``BboxParams``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
from albumentations.augmentations.crops import functional as fcrops
from albumentations.augmentations.crops.transforms import BaseCrop


class RandomSizeCrop(BaseCrop):
    """A crop of random width in ``[min_size, min(W, max_size)]`` and height in ``[min_size, min(H, max_size)]``
    (uniform integers, as DETR's ``RandomSizeCrop``) at a uniformly random place; sides shorter than ``min_size``
    are kept whole."""

    class InitSchema(BaseCrop.InitSchema):
        min_size: int
        max_size: int

    def __init__(self, min_size: int, max_size: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.min_size = min_size
        self.max_size = max_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        crop_h = self._side(height)
        crop_w = self._side(width)
        coords = fcrops.get_crop_coords(
            (height, width), (crop_h, crop_w), self.py_random.random(), self.py_random.random()
        )
        return {"crop_coords": coords}

    def _side(self, length: int) -> int:
        low = min(self.min_size, length)
        return self.py_random.randint(low, max(low, min(length, self.max_size)))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_size", "max_size")


def detr_crop_branch(
    p: float, resize: Sequence[int] = (400, 500, 600), crop: Sequence[int] = (384, 600)
) -> A.Sequential:
    """With probability ``p``: the shorter side to one of ``resize``, then a :class:`RandomSizeCrop` of ``crop``
    (min, max) pixels per side (DETR / DINO: p 0.5, 400/500/600, 384-600)."""
    return A.Sequential([A.SmallestMaxSize(max_size=list(resize)), RandomSizeCrop(*crop)], p=p)
