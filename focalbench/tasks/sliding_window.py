"""Sliding-window inference (mmseg's ``slide_inference``), shared by the UPerNet and Mask2Former semantic tasks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side: every ``stride`` pixels, the last one flush with the border
    (one window, at 0, when ``size`` is at most ``crop``)."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(k * stride + crop, size) - crop, 0) for k in range(count)]


def slide_inference(predict: Callable[[Tensor], Tensor], images: Tensor, crop_size: int, stride: int) -> Tensor:
    """``predict`` (``[N, 3, h, w]`` -> ``[N, C, h, w]`` per-pixel scores at the window's size) run on
    ``crop_size`` windows every ``stride`` pixels; the scores are summed and divided by how many windows cover each
    pixel. An image no larger than ``crop_size`` is one window: the same as predicting it whole."""
    height, width = images.shape[-2:]
    total, count = None, images.new_zeros((1, 1, height, width), dtype=torch.float)
    for y in window_starts(height, crop_size, stride):
        for x in window_starts(width, crop_size, stride):
            window = (slice(None), slice(None), slice(y, y + crop_size), slice(x, x + crop_size))
            scores = predict(images[window]).float()
            if total is None:
                total = scores.new_zeros((*scores.shape[:2], height, width))
            total[window] += scores
            count[window] += 1
    return total / count
