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
from focalbench.data.panoptic import PanopticDataModule
from focalbench.data.panoptic_format import id_to_rgb, rgb_to_id
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


# ------------------------------------------------------------------------------ a Hugging Face data set
NAMES = [c["name"] for c in CATEGORIES]


def saved_dataset(root: Path, layout: str = "rows") -> Path:
    """The scenes of :func:`write_folder` as a ``Dataset.save_to_disk`` folder (``train`` / ``validation``).

    ``rows``: PNG column, segments as a list of dicts with a ``ClassLabel`` category and ``isthing``;
    ``columnar``: ids as a 2-D integer array, segments in ``datasets.Sequence``'s dict-of-lists layout with plain
    integer categories and no ``isthing``, other column names."""
    import datasets

    def columns(scenes):
        rows = {"image": [], "panoptic": [], "segments_info": [], "image_id": []}
        for k, (image, ids, info) in enumerate(scenes):
            rows["image"].append(Image.fromarray(image))
            rows["panoptic"].append(Image.fromarray(id_to_rgb(ids)) if layout == "rows" else ids.astype(np.int32))
            segments = [
                {"id": s["id"], "category_id": s["category_id"] - 1, "iscrowd": s["iscrowd"],
                 "isthing": bool(CATEGORIES[s["category_id"] - 1]["isthing"])}
                for s in info
            ]  # fmt: skip
            if layout == "columnar":
                segments = {key: [s[key] for s in segments] for key in ("id", "category_id", "iscrowd")}
            rows["segments_info"].append(segments)
            rows["image_id"].append(100 + k)
        return rows

    integer = datasets.Value("int64")
    if layout == "rows":
        segment = {"id": integer, "category_id": datasets.ClassLabel(names=NAMES), "iscrowd": integer,
                   "isthing": datasets.Value("bool")}  # fmt: skip
        panoptic, segments = datasets.Image(), datasets.List(segment)
    else:
        segment = {key: integer for key in ("id", "category_id", "iscrowd")}
        panoptic, segments = datasets.List(datasets.List(datasets.Value("int32"))), datasets.Sequence(segment)
    features = datasets.Features(
        {"image": datasets.Image(), "panoptic": panoptic, "segments_info": segments, "image_id": integer}
    )
    splits = {"train": [scene_with_void_and_crowd(i) for i in range(3)],
              "validation": [scene_with_void_and_crowd(100 + i) for i in range(2)]}  # fmt: skip
    data = datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(columns(scenes), features=features) for name, scenes in splits.items()}
    )
    if layout == "columnar":
        data = data.rename_columns({"panoptic": "ids", "segments_info": "segments"})
    data.save_to_disk(str(root))
    return root


def test_saved_dataset_gives_the_same_examples_as_the_coco_folder(tmp_path):
    coco = PanopticDataModule(root=str(write_folder(tmp_path / "coco")), num_workers=0, image_size=32)
    saved = PanopticDataModule(root=str(saved_dataset(tmp_path / "saved")), num_workers=0, image_size=32)
    assert saved.class_names == NAMES and saved.things == [True] * 4 + [False] * 2  # ClassLabel, isthing
    for module in (coco, saved):
        module.setup("fit")
    assert (len(saved.train_set), len(saved.val_set)) == (3, 2)
    for index in range(2):
        ours, theirs = saved.val_set[index], coco.val_set[index]
        assert torch.equal(ours["image"], theirs["image"]) and torch.equal(ours["segments"], theirs["segments"])
        strip = [{k: s[k] for k in ("id", "category_id", "iscrowd")} for s in ours["segments_info"]]
        assert strip == theirs["segments_info"]  # ids renumbered 1..n, class indices, the crowd flagged
        assert ours["image_id"] == 100 + index
    batch = next(iter(saved.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["segments"].shape == (2, 32, 32)


def test_saved_dataset_with_id_arrays_columnar_segments_and_named_columns(tmp_path):
    root = saved_dataset(tmp_path / "saved", layout="columnar")
    module = PanopticDataModule(root=str(root), num_workers=0, panoptic_column="ids", segments_column="segments",
                                class_names=NAMES)  # fmt: skip
    module.setup("validate")
    _, ids, info = scene_with_void_and_crowd(100)
    example = module.val_set[0]
    for new, old in zip(example["segments_info"], info):
        assert torch.equal(example["segments"] == new["id"], torch.from_numpy(ids == old["id"]))
        assert new["category_id"] == old["category_id"] - 1
    # no isthing in the data: the split is asked of the user, naming the key
    with pytest.raises(DataSourceError, match=r"carry no 'isthing'; set model\.thing_classes"):
        _ = module.things
    with pytest.raises(DataSourceError, match=r"category_id has no ClassLabel feature; set data\.class_names"):
        _ = PanopticDataModule(root=str(root), panoptic_column="ids", segments_column="segments").class_names
    with pytest.raises(DataSourceError, match=r"column 'panoptic' \(data\.panoptic_column\) not found"):
        _ = PanopticDataModule(root=str(root), class_names=NAMES).class_names


def test_offline_hub_id_is_one_line_naming_it_and_the_local_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataSourceError) as info:
        _ = PanopticDataModule(dataset="no-such-user/coco-panoptic").class_names
    message = str(info.value)
    assert "\n" not in message and "'no-such-user/coco-panoptic'" in message
    assert "--data.root" in message and "save_to_disk" in message and "reach the hub" in message
