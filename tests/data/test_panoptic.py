"""COCO panoptic data: id encoding, the folder layout as downloaded, renumbered segments, crowd and void kept for
evaluation, bad files named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from focalbench.data.demo_panoptic import CATEGORIES, make_panoptic_scene, write_coco_panoptic
from focalbench.data.panoptic import PanopticDataModule, id_to_rgb, rgb_to_id
from focalbench.data.sources import DataSourceError


def scene_with_void_and_crowd(seed: int, size: int = 48):
    """A demo scene with a void band (rows 0-1) and its first thing segment marked as a crowd."""
    image, ids, info = make_panoptic_scene(np.random.default_rng(seed), size)
    ids = ids.copy()
    ids[:2] = 0
    info = [dict(s) for s in info]
    next(s for s in info if s["category_id"] <= 4)["iscrowd"] = 1
    return image, ids, info


def write_folder(root: Path, train: int = 3, val: int = 2) -> Path:
    splits = {
        "train": [scene_with_void_and_crowd(i) for i in range(train)],
        "val": [scene_with_void_and_crowd(100 + i) for i in range(val)],
    }
    return write_coco_panoptic(root, splits, CATEGORIES, year="2017")


def test_id_encoding_round_trips():
    ids = np.array([[0, 1, 255], [256, 1000 * 6 + 1, 256**3 - 1]])
    rgb = id_to_rgb(ids)
    assert rgb[1, 0].tolist() == [0, 1, 0] and rgb[0, 2].tolist() == [255, 0, 0]  # R + 256 G + 256² B
    assert np.array_equal(rgb_to_id(rgb), ids)


def test_coco_layout_reads_classes_things_and_renumbered_segments(tmp_path):
    root = write_folder(tmp_path / "coco")
    data = PanopticDataModule(root=str(root), num_workers=0, image_size=32)
    assert data.class_names == ["circle", "square", "star", "triangle", "sky", "ground"]
    assert data.things == [True, True, True, True, False, False]
    data.setup("fit")
    assert len(data.train_set) == 3 and len(data.val_set) == 2
    example = data.val_set[0]
    _, ids, info = scene_with_void_and_crowd(100)
    # evaluation: original size, the id map renumbered 1..n in segments_info order, void 0, crowd kept and flagged
    assert example["image"].shape == (3, 48, 48) and example["segments"].shape == (48, 48)
    assert [s["id"] for s in example["segments_info"]] == list(range(1, len(info) + 1))
    assert [s["category_id"] for s in example["segments_info"]] == [s["category_id"] - 1 for s in info]
    assert [s["iscrowd"] for s in example["segments_info"]] == [s["iscrowd"] for s in info]
    for new, old in zip(example["segments_info"], info):
        assert torch.equal(example["segments"] == new["id"], torch.from_numpy(ids == old["id"]))
    assert (example["segments"][:2] == 0).all()
    # training: same-size crops stacked with their segment maps (padding is void)
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["segments"].shape == (2, 32, 32)
    assert data.image_ids["00001.png"] == 2


def test_png_with_an_unlisted_id_is_named(tmp_path):
    root = write_folder(tmp_path / "coco")
    path = root / "annotations" / "panoptic_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segments_info"] = data["annotations"][0]["segments_info"][1:]
    path.write_text(json.dumps(data))
    module = PanopticDataModule(root=str(root), num_workers=0)
    module.setup("validate")
    with pytest.raises(DataSourceError, match=r"panoptic_val2017/00000\.png: segment ids \[\d+\] are not in"):
        module.val_set[0]


def test_png_of_another_size_and_missing_files_are_named(tmp_path):
    root = write_folder(tmp_path / "coco")
    png = root / "annotations" / "panoptic_val2017" / "00001.png"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(png)
    module = PanopticDataModule(root=str(root), num_workers=0)
    module.setup("validate")
    message = r"00001\.png is 12x10 \(WxH\) but its image .*val2017/00001\.png is 48x48"
    with pytest.raises(DataSourceError, match=message):
        module.val_set[1]
    png.unlink()
    with pytest.raises(DataSourceError, match=r"file .*panoptic_val2017/00001\.png \(image id 2\) does not exist"):
        PanopticDataModule(root=str(root), num_workers=0).setup("validate")


def test_unknown_category_and_missing_isthing_are_named(tmp_path):
    root = write_folder(tmp_path / "coco")
    path = root / "annotations" / "panoptic_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segments_info"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    message = r"panoptic_train2017\.json: segment \d+ of 00000\.png: unknown category id 99"
    with pytest.raises(DataSourceError, match=message):
        PanopticDataModule(root=str(root), num_workers=0).setup("fit")
    for category in data["categories"]:
        category.pop("isthing")
    path.write_text(json.dumps(data))
    with pytest.raises(DataSourceError, match="have no 'isthing'"):
        _ = PanopticDataModule(root=str(root), num_workers=0).class_names
