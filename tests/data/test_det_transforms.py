"""DETR's crop branch (DINO's augmentation): crop sizes, boxes and masks that follow the crop."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from focalbench.data.det_transforms import RandomSizeCrop, detr_crop_branch
from focalbench.data.detection import DetectionDataModule


def coordinate_image(height: int, width: int) -> np.ndarray:
    """float32 HxWx3 whose channels hold each pixel's x and y: a crop's offset can be read off its corner."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xs, ys, np.zeros_like(xs)], -1)


def test_random_size_crop_sizes_and_box_offsets():
    pipeline = A.Compose(
        [RandomSizeCrop(384, 600)], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["ids"], clip=True)
    )
    pipeline.set_random_seed(0)
    box = np.array([[100.0, 120.0, 300.0, 330.0]])
    heights, widths = set(), set()
    for _ in range(40):
        out = pipeline(image=coordinate_image(500, 700), bboxes=box, ids=[0])
        height, width = out["image"].shape[:2]
        assert 384 <= height <= 500 and 384 <= width <= 600  # DETR: [min, min(side, max)]
        heights.add(height)
        widths.add(width)
        x0, y0 = out["image"][0, 0, :2]
        expected = np.clip(box - [x0, y0, x0, y0], 0, [width, height, width, height])
        if len(out["bboxes"]):
            np.testing.assert_allclose(out["bboxes"], expected, atol=1e-4)
    assert len(heights) > 10 and len(widths) > 10  # random sizes, not one


def test_crop_keeps_a_short_side_whole():
    pipeline = A.Compose([RandomSizeCrop(384, 600)])
    pipeline.set_random_seed(0)
    assert pipeline(image=coordinate_image(300, 700))["image"].shape[0] == 300


def test_crop_branch_probability():
    image = coordinate_image(64, 80)
    never, always = A.Compose([detr_crop_branch(0.0)]), A.Compose([detr_crop_branch(1.0)])
    always.set_random_seed(0)
    assert never(image=image)["image"].shape[:2] == (64, 80)
    for _ in range(10):
        height, width = always(image=image)["image"].shape[:2]
        assert 384 <= height <= 600 and 384 <= width <= 600  # shorter side to 400-600, then a 384-600 crop


def test_data_module_crop_branch_moves_boxes_with_their_masks():
    dm = DetectionDataModule(root="demo", num_workers=0, hflip=0.0, detr_crop=1.0)
    dm.setup("fit")
    torch.manual_seed(0)
    for index in range(1, 9):
        sample = dm.train_set[index]
        image, target = sample["image"], sample["target"]
        height, width = image.shape[1:]
        assert 384 <= min(height, width) and max(height, width) <= 600
        assert target["masks"].shape[1:] == (height, width) and len(target["masks"]) == len(target["boxes"])
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            mask_box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert box.tolist() == pytest.approx(mask_box.tolist(), abs=2.0)  # the box still frames its mask
