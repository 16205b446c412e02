"""The torchvision functions swapped in while torch.export traces a detector compute what torchvision's do."""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as torchvision_paste
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from focalbench.export.traceable import batched_nms, paste_masks_in_image, traceable_detector


def random_boxes(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height])
    return torch.cat([corners.min(1).values, corners.max(1).values], 1)  # xyxy inside the image


def test_pasted_masks_equal_torchvision_s():
    generator = torch.Generator().manual_seed(0)
    for height, width in ((37, 53), (64, 64), (90, 21)):
        masks = torch.rand(9, 1, 28, 28, generator=generator)
        boxes = random_boxes(9, height, width, generator)
        boxes[:2, 2:] = boxes[:2, :2] + 0.3  # boxes under a pixel wide
        got = paste_masks_in_image(masks, boxes, (height, width))
        torch.testing.assert_close(got, torchvision_paste(masks, boxes, (height, width)), rtol=0, atol=1e-6)
    assert paste_masks_in_image(masks[:0], boxes[:0], (5, 6)).shape == (0, 1, 5, 6)


def test_batched_nms_keeps_what_torchvision_keeps_above_its_loop_threshold():
    generator = torch.Generator().manual_seed(1)
    boxes = random_boxes(1500, 200, 200, generator)  # 6000 coordinates: torchvision loops over the classes
    scores = torch.rand(1500, generator=generator)
    classes = torch.randint(0, 5, (1500,), generator=generator)
    keep = batched_nms(boxes, scores, classes, 0.5)
    assert 0 < len(keep) < 1500
    assert torch.equal(keep, box_ops.batched_nms(boxes, scores, classes, 0.5))
    assert len(batched_nms(boxes[:0], scores[:0], classes[:0], 0.5)) == 0


def test_swaps_are_undone_after_the_export():
    pooler = MultiScaleRoIAlign(["0", "1"], 7, 2)
    features = {"0": torch.rand(1, 4, 64, 64), "1": torch.rand(1, 4, 32, 32)}  # strides 4 and 8
    boxes = [random_boxes(12, 256, 256, torch.Generator().manual_seed(2))]
    want = pooler(features, boxes, [(256, 256)])
    assert set(pooler.map_levels(boxes).tolist()) == {0, 1}  # boxes pooled from both levels
    originals = box_ops.batched_nms
    with traceable_detector():
        assert box_ops.batched_nms is batched_nms
        torch.testing.assert_close(pooler(features, boxes, [(256, 256)]), want, rtol=0, atol=0)
    assert box_ops.batched_nms is originals
