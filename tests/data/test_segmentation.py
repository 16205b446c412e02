"""The segmentation data module on every source users have, mmseg's training transforms, and bad input."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from focalbench.data.seg_transforms import (
    CatMaxRatioCrop,
    RescaleToRange,
    rescale_size,
    segmentation_train_transform,
)
from focalbench.data.segmentation import ADE20K_CLASSES, SegmentationDataModule
from focalbench.data.sources import DataSourceError


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _pair(root: Path, split: str, name: str, size=(20, 24), values=(0, 1, 2), masks="masks", suffix=".png") -> None:
    """An image and its mask: horizontal bands of the given class values."""
    rng = np.random.default_rng(len(name))
    image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    mask = np.repeat(np.array(values, np.uint8), -(-size[0] // len(values)))[: size[0], None].repeat(size[1], 1)
    _png((root / "images" / split / name).with_suffix(suffix), image)
    _png(root / masks / split / f"{name}.png", mask)


def _module(**kwargs) -> SegmentationDataModule:
    return SegmentationDataModule(**{"image_size": 16, "batch_size": 2, "num_workers": 0, "scale": (32, 16), **kwargs})


def test_demo_layout_gives_crops_for_training_and_original_masks_for_evaluation():
    module = _module(root="demo", image_size=32, scale=(64, 64))
    assert module.class_names == ["background", "circle", "square", "star", "triangle"] and module.num_classes == 5
    module.setup("fit")
    assert (len(module.train_set), len(module.val_set)) == (1000, 200)
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 32, 32) and set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    val = next(iter(module.val_dataloader()))
    assert isinstance(val["image"], list) and val["image"][0].shape == (3, 64, 64) and val["mask"][0].shape == (64, 64)
    original = np.asarray(Image.open(Path(module.data_root) / "masks" / "val" / "00000.png"))
    assert np.array_equal(val["mask"][0].numpy(), original)  # scored against the mask as stored


@pytest.mark.parametrize("point_at", ["folder", "parent"])
def test_ade20k_layout_reduces_the_zero_label(tmp_path, point_at):
    ade = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i in range(2):
            _pair(ade, split, f"ADE_{split}_{i:08d}", values=(0, 1, 150), masks="annotations", suffix=".jpg")
    module = _module(root=str(ade if point_at == "folder" else tmp_path), benchmark="ade20k")
    assert module.num_classes == 150 and module.class_names[:3] == ["wall", "building", "sky"]
    assert module.class_names == list(ADE20K_CLASSES)
    module.setup("fit")
    assert (len(module.train_set), len(module.val_set)) == (2, 2)
    mask = module.val_set[0]["mask"]
    assert mask.shape == (20, 24) and set(mask.unique().tolist()) == {255, 0, 149}  # 0 → ignore, 1 → 0, 150 → 149


def test_folder_without_splits_holds_out_a_fixed_fraction(tmp_path):
    for i in range(8):
        _pair(tmp_path, "", f"{i}")
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    first, second = _module(root=str(tmp_path), val_fraction=0.25), _module(root=str(tmp_path), val_fraction=0.25)
    first.setup("fit")
    second.setup("fit")
    assert first.class_names == ["sky", "road", "car"]
    assert (len(first.train_set), len(first.val_set)) == (6, 2)
    assert first.val_set.rows["image"] == second.val_set.rows["image"]


def test_csv_and_saved_dataset_sources(tmp_path):
    for i in range(4):
        _pair(tmp_path / "files", "", f"{i}")
    rows = ["image,mask"] + [f"{tmp_path}/files/images/{i}.png,{tmp_path}/files/masks/{i}.png" for i in range(4)]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    module = _module(root=str(tmp_path / "data.csv"), val_fraction=0.5)
    module.setup("fit")
    assert module.num_classes == 3 and len(module.val_set) == 2
    assert module.val_set[0]["mask"].shape == (20, 24)

    images = [str(tmp_path / "files" / "images" / f"{i}.png") for i in range(4)]
    masks = [str(tmp_path / "files" / "masks" / f"{i}.png") for i in range(4)]
    saved = datasets.Dataset.from_dict({"picture": images, "label_map": masks})
    saved = saved.cast_column("picture", datasets.Image()).cast_column("label_map", datasets.Image())
    datasets.DatasetDict(train=saved.select(range(3)), validation=saved.select([3])).save_to_disk(tmp_path / "saved")
    module = _module(
        root=str(tmp_path / "saved"), image_column="picture", mask_column="label_map", class_names=["a", "b", "c"]
    )
    module.setup("fit")
    assert (len(module.train_set), len(module.val_set)) == (3, 1)
    assert set(module.val_set[0]["mask"].unique().tolist()) == {0, 1, 2}


def test_palette_masks_are_converted_with_the_given_colours(tmp_path):
    palette = [(0, 0, 0), (200, 0, 0), (0, 200, 0)]
    _pair(tmp_path, "train", "a")
    _pair(tmp_path, "val", "b")
    mask = np.asarray(Image.open(tmp_path / "masks" / "val" / "b.png"))
    _png(tmp_path / "masks" / "val" / "b.png", np.asarray(palette, np.uint8)[mask])  # the same classes as colours
    module = _module(root=str(tmp_path), class_names=["x", "y", "z"], palette=palette)
    module.setup("fit")
    assert np.array_equal(module.val_set[0]["mask"].numpy(), mask)

    without = _module(root=str(tmp_path), class_names=["x", "y", "z"])
    without.setup("fit")
    with pytest.raises(DataSourceError, match=r"mask .*b\.png is a colour \(RGB\) image: set data.palette"):
        without.val_set[0]
    other = _module(root=str(tmp_path), class_names=["x", "y", "z"], palette=palette[:2])
    other.setup("fit")
    with pytest.raises(DataSourceError, match=r"b\.png: colours \[\(0, 200, 0\)\] are not in data.palette"):
        other.val_set[0]


def test_bad_masks_stop_with_the_file_named(tmp_path):
    _pair(tmp_path, "train", "good")
    _pair(tmp_path, "val", "too_big", values=(0, 7, 255))
    _pair(tmp_path, "val", "wrong_size")
    _png(tmp_path / "masks" / "val" / "wrong_size.png", np.zeros((10, 12), np.uint8))
    module = _module(root=str(tmp_path), class_names=["x", "y", "z"])
    module.setup("fit")
    with pytest.raises(DataSourceError, match=r"too_big\.png: values \[7\] outside the 3 classes 0..2 \(255 = ign"):
        module.val_set[0]
    with pytest.raises(DataSourceError, match=r"mask .*wrong_size\.png is 12x10 \(WxH\) but its image .* is 24x20"):
        module.val_set[1]

    (tmp_path / "masks" / "val" / "good.png").unlink(missing_ok=True)
    _png(tmp_path / "images" / "val" / "orphan.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataSourceError, match=r"image .*orphan\.png has no mask"):
        _module(root=str(tmp_path), class_names=["x", "y", "z"]).setup("fit")


def test_missing_class_names_and_unknown_layouts_are_explained(tmp_path):
    _pair(tmp_path / "data", "train", "a")
    with pytest.raises(DataSourceError, match="set data.class_names .* classes.txt"):
        _module(root=str(tmp_path / "data")).num_classes  # noqa: B018 (the property reads classes.txt)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataSourceError, match="holds no segmentation data: expected images/ beside masks/"):
        _module(root=str(tmp_path / "other"), class_names=["a"]).setup("fit")


def test_offline_hub_copy_without_local_data_names_both_options():
    module = _module(
        dataset="zhoubolei/scene_parse_150",
        revision="refs/convert/parquet",
        data_files={"train": "scene_parsing/train/*.parquet"},
        benchmark="ade20k",
    )
    with pytest.raises(DataSourceError) as info:
        module.setup("fit")
    message = str(info.value)
    assert "zhoubolei/scene_parse_150" in message and "ADEChallengeData2016.zip" in message
    assert "--data.root" in message and "reach the hub" in message


def test_rescale_matches_mmcv_keep_ratio_rescale():
    assert rescale_size((300, 400), (2048, 512)) == (512, 683)  # the short side reaches 512
    assert rescale_size((100, 2000), (2048, 512)) == (102, 2048)  # the long side caps first
    assert rescale_size((512, 683), (2048, 512), ratio=0.5) == (256, 342)
    step = RescaleToRange((64, 32), (0.5, 2.0))
    step.set_random_seed(0)
    sizes = {step(image=np.zeros((100, 200, 3), np.uint8))["image"].shape[:2] for _ in range(30)}
    assert all(16 <= h <= 64 and w == 2 * h for h, w in sizes) and len(sizes) > 5


def test_crop_avoids_crops_one_class_dominates():
    mask = np.zeros((64, 256), np.uint8)
    mask[:, 128:] = 1
    mask[:8] = 255  # ignored pixels count for neither class
    crop = CatMaxRatioCrop(64, 64, cat_max_ratio=0.75, tries=50)
    crop.set_random_seed(0)
    for _ in range(10):
        out = crop(image=np.zeros((64, 256, 3), np.uint8), mask=mask)["mask"]
        counts = np.bincount(out[out != 255], minlength=2)
        assert counts.min() > 0 and counts.max() / counts.sum() < 0.75


def test_train_pipeline_pads_small_images_with_ignore():
    transform = segmentation_train_transform(32, scale=(16, 16), ratio_range=(1.0, 1.0), photometric=False)
    out = transform(image=np.full((16, 16, 3), 100, np.uint8), mask=np.ones((16, 16), np.uint8))
    assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (32, 32)
    assert (out["mask"][:16, :16] == 1).all() and (out["mask"][16:] == 255).all() and (out["mask"][:, 16:] == 255).all()
    assert (out["image"][:, 16:] == 0).all()  # zero in the normalised space, as mmseg pads after Normalize
