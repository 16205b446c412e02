"""torchvision's Mask R-CNN / Faster R-CNN made traceable by ``torch.export``, for the time of an export.

torch.export traces the detector with a symbolic number of boxes after each NMS (an unbacked size: torchvision's
``nms`` has a fake kernel for it). Three torchvision functions then ask Python for that number, which a trace
cannot answer; :func:`traceable_detector` swaps them, while the export runs, for versions that compute the same
thing with tensor operations only:

- ``batched_nms`` chooses between a per-class loop and the coordinate trick by the box count, and the trick returns
  early when there are no boxes: here always the coordinate trick, as torchvision runs it when tracing for ONNX
  (the same boxes kept, but where an IoU lies within the rounding of the offset coordinates of the threshold).
- ``_multiscale_roi_align`` sizes its output with ``len(rois)``: here with ``rois.shape[0]``.
- ``paste_masks_in_image`` resizes each detection's 28×28 mask to its box one by one: here all at once, with the
  bilinear weights ``F.interpolate`` uses (within 2e-7 of torchvision's masks in the tests).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torchvision.models.detection import transform as rcnn_transform
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.ops import boxes as box_ops
from torchvision.ops import nms, poolers, roi_align


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-class NMS by offsetting each class's boxes beyond the others' (torchvision's coordinate trick)."""
    largest = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()  # 0 for no boxes, without a branch
    offsets = idxs.to(boxes) * (largest + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def multiscale_roi_align(
    x_filtered: list[Tensor],
    boxes: list[Tensor],
    output_size: list[int],
    sampling_ratio: int,
    scales: list[float] | None,
    mapper: poolers.LevelMapper | None,
) -> Tensor:
    """torchvision's ``_multiscale_roi_align``: each box pooled from the FPN level its size maps to."""
    rois = poolers._convert_to_roi_format(boxes)
    if len(x_filtered) == 1:
        return roi_align(x_filtered[0], rois, output_size, scales[0], sampling_ratio)
    levels = mapper(boxes)
    result = x_filtered[0].new_zeros((rois.shape[0], x_filtered[0].shape[1], *output_size))
    for level, (features, scale) in enumerate(zip(x_filtered, scales)):
        index = torch.where(levels == level)[0]
        result[index] = roi_align(features, rois[index], output_size, scale, sampling_ratio).to(result.dtype)
    return result


def _bilinear_axis(
    length: int, start: Tensor, end: Tensor, mask_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Along one image axis, for every box (``start``..``end`` inclusive, int64): which pixels the box covers and
    the two mask rows / columns and weights ``F.interpolate(mode="bilinear", align_corners=False)`` reads for each
    pixel when it resizes the ``mask_size`` mask to the box."""
    pixels = torch.arange(length, device=start.device)
    inside = (pixels >= start[:, None].clamp(min=0)) & (pixels <= end[:, None].clamp(max=length - 1))
    box_length = (end - start + 1).clamp(min=1).to(torch.float32)
    scale = (torch.full_like(box_length, mask_size) / box_length).double()
    local = (pixels - start[:, None]).double()
    # ATen computes scale * (i + 0.5) - 0.5 in float with one rounding (a fused multiply-add): exact in double
    source = (scale[:, None] * (local + 0.5) - 0.5).float().clamp(min=0)
    low = source.long().clamp(max=mask_size - 1)
    high = torch.where(low < mask_size - 1, low + 1, low)
    weight_high = source - low.to(torch.float32)
    return inside, low, high, 1 - weight_high, weight_high


def paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: tuple[int, int], padding: int = 1) -> Tensor:
    """torchvision's ``paste_masks_in_image`` for all detections at once: ``masks`` (N, 1, M, M) resized into their
    ``boxes`` (N, 4) on an (N, 1, H, W) canvas, zero outside the boxes."""
    masks, scale = expand_masks(masks, padding=padding)
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64)
    masks = masks[:, 0]
    size = masks.shape[-1]
    x0, y0, x1, y1 = boxes.unbind(1)
    in_y, top, bottom, w_top, w_bottom = _bilinear_axis(img_shape[0], y0, y1, size)
    in_x, left, right, w_left, w_right = _bilinear_axis(img_shape[1], x0, x1, size)
    # blend columns first (N, M, W), then rows (N, H, W): F.interpolate's order, and small intermediates
    columns = -1, masks.shape[1], -1
    across = w_left[:, None, :] * masks.gather(2, left[:, None, :].expand(*columns)) + w_right[:, None, :] * (
        masks.gather(2, right[:, None, :].expand(*columns))
    )
    rows = -1, -1, across.shape[2]
    pasted = w_top[:, :, None] * across.gather(1, top[:, :, None].expand(*rows)) + w_bottom[:, :, None] * (
        across.gather(1, bottom[:, :, None].expand(*rows))
    )
    return torch.where(in_y[:, :, None] & in_x[:, None, :], pasted, 0.0)[:, None]


@contextmanager
def traceable_detector() -> Iterator[None]:
    """torchvision's detector with the three functions above in place of its own (see the module docstring)."""
    swaps = [
        (box_ops, "batched_nms", batched_nms),
        (poolers, "_multiscale_roi_align", multiscale_roi_align),
        (rcnn_transform, "paste_masks_in_image", paste_masks_in_image),
    ]
    originals = [getattr(module, name) for module, name, _ in swaps]
    for module, name, replacement in swaps:
        setattr(module, name, replacement)
    try:
        with warnings.catch_warnings():
            # torchvision's fake nms kernel still calls the deprecated name of torch's unbacked-size API
            warnings.filterwarnings("ignore", "`create_unbacked_symint` is deprecated", FutureWarning)
            yield
    finally:
        for (module, name, _), original in zip(swaps, originals):
            setattr(module, name, original)
