"""Detection data: COCO folders (non-contiguous ids, crowd, RLE, empty images), Hugging Face ``objects`` data, the
augmentations moving boxes and masks, and errors on bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from focalbench.data.coco import decode_mask, encode_mask
from focalbench.data.demo import SHAPE_CLASSES, make_scene
from focalbench.data.detection import DetectionDataModule
from focalbench.data.sources import DataSourceError

CATEGORY_IDS = (3, 7, 11, 20)  # non-contiguous on purpose: labels 1..4 inside, these ids outside


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (run lengths in column-major order, starting with a run of zeros)."""
    flat = np.asfortranarray(mask).flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def write_coco(root: Path, split: str, count: int, *, size: int = 64, seed: int = 0, suffix: str = "") -> Path:
    """A COCO-layout folder split: ``root/{split}{suffix}/*.png`` + ``annotations/instances_{split}{suffix}.json``.

    Image 0 has no annotations; image 1's first object is a compressed RLE; image 2 has an extra crowd region
    (uncompressed RLE); category ids are :data:`CATEGORY_IDS`; image ids start at 100.
    """
    (root / f"{split}{suffix}").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        scene = make_scene(rng, image_size=size, task="detection", **({"num_shapes": 0} if i == 0 else {}))
        file_name = f"{i:03d}.png"
        Image.fromarray(scene.image).save(root / f"{split}{suffix}" / file_name)
        image_id = 100 + i
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for k, inst in enumerate(scene.instances):
            x1, y1, x2, y2 = inst.box
            segmentation = encode_mask(inst.mask) if (i == 1 and k == 0) else [inst.polygon.ravel().tolist()]
            annotations.append(
                {
                    "id": 1000 + len(annotations),
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[inst.label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(inst.mask.sum()),
                    "iscrowd": 0,
                    "segmentation": segmentation,
                }
            )
        if i == 2:
            crowd = np.zeros((size, size), np.uint8)
            crowd[: size // 6, : size // 4] = 1
            annotations.append(
                {
                    "id": 1000 + len(annotations),
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[0],
                    "bbox": [0.0, 0.0, float(size // 4), float(size // 6)],
                    "area": float(crowd.sum()),
                    "iscrowd": 1,
                    "segmentation": uncompressed_rle(crowd),
                }
            )
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CATEGORY_IDS, SHAPE_CLASSES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    path = root / "annotations" / f"instances_{split}{suffix}.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    write_coco(tmp_path / "coco", "train", 6, seed=0, suffix="2017")
    write_coco(tmp_path / "coco", "val", 5, seed=1, suffix="2017")
    return tmp_path / "coco"


def datamodule(root, **kwargs) -> DetectionDataModule:
    dm = DetectionDataModule(root=str(root), batch_size=2, num_workers=0, **kwargs)
    dm.setup("fit")
    return dm


def test_coco_folder_reads_categories_without_iterating(coco_root):
    dm = DetectionDataModule(root=str(coco_root))
    assert dm.num_classes == 4 and dm.class_names == list(SHAPE_CLASSES)
    assert dm.category_ids == list(CATEGORY_IDS)
    assert dm.train_set is None  # nothing loaded but the categories


def test_coco_samples_targets_and_masks(coco_root):
    dm = datamodule(coco_root, hflip=0.0)
    coco = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    empty = dm.val_set[0]
    assert empty["target"]["boxes"].shape == (0, 4) and empty["target"]["masks"].shape == (0, 64, 64)
    sample = dm.val_set[2]
    image, target = sample["image"], sample["target"]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    anns = [a for a in coco["annotations"] if a["image_id"] == 102]
    assert target["image_id"] == 102 and target["iscrowd"].tolist() == [a["iscrowd"] for a in anns]
    assert target["iscrowd"].sum() == 1  # validation keeps the crowd region for the metric
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    torch.testing.assert_close(target["boxes"], expected.float())
    assert target["labels"].tolist() == [CATEGORY_IDS.index(a["category_id"]) + 1 for a in anns]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(anns), 64, 64)
    for mask, ann in zip(target["masks"], anns):
        assert mask.sum() == ann["area"]
    # training drops the crowd region; RLE (compressed) masks decode to the same mask as their polygon
    train_target = dm._dataset("val", train=True)[2]["target"]
    assert train_target["iscrowd"].sum() == 0 and len(train_target["boxes"]) == len(anns) - 1
    rle_ann = next(a for a in coco["annotations"] if isinstance(a["segmentation"], dict) and not a["iscrowd"])
    assert decode_mask(rle_ann, 64, 64).sum() == rle_ann["area"]


def test_batches_are_lists_and_flip_moves_boxes_and_masks(coco_root):
    dm = datamodule(coco_root, hflip=1.0)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch["image"], list) and isinstance(batch["target"], list) and len(batch["image"]) == 2
    plain = dm._dataset("train", train=False)
    for index in range(1, 4):
        flipped, original = dm.train_set[index]["target"], plain[index]["target"]
        keep = original["iscrowd"] == 0
        mirror = torch.tensor([-1, 1, -1, 1])
        expected = original["boxes"][keep][:, [2, 1, 0, 3]] * mirror + torch.tensor([64, 0, 64, 0])
        torch.testing.assert_close(flipped["boxes"], expected, atol=1e-4, rtol=0)
        assert torch.equal(flipped["masks"], original["masks"][keep].flip(-1))
        assert flipped["labels"].tolist() == original["labels"][keep].tolist()


def test_crop_drops_degenerate_boxes_with_their_masks(coco_root):
    dm = datamodule(coco_root, hflip=0.0, crop_scale=(0.05, 0.1), image_size=32, min_box_area=4)
    seen_fewer = False
    for epoch in range(3):
        torch.manual_seed(epoch)
        for index in range(len(dm.train_set)):
            target = dm.train_set[index]["target"]
            boxes, masks = target["boxes"], target["masks"]
            assert masks.shape[1:] == (32, 32) and len(masks) == len(boxes) == len(target["labels"])
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            assert (area >= 4).all()
            seen_fewer |= len(boxes) < len(dm._records["train"][index].annotations)
    assert seen_fewer


def test_demo_layout_is_detected(tmp_path):
    write_coco(tmp_path / "demo", "train", 3)
    write_coco(tmp_path / "demo", "val", 2, seed=1)
    dm = datamodule(tmp_path / "demo")
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2


def test_without_validation_json_a_fraction_is_held_out(tmp_path):
    write_coco(tmp_path / "only", "train", 10)
    dm = datamodule(tmp_path / "only", val_fraction=0.2)
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_box_outside_the_image_is_clipped_with_a_warning(coco_root, caplog):
    def overshoot(data):
        ann = next(a for a in data["annotations"] if not a["iscrowd"])
        ann["bbox"] = [50.0, 40.0, 30.0, 10.0]  # x + w = 80 > 64

    edit_json(coco_root / "annotations" / "instances_val2017.json", overshoot)
    with caplog.at_level(logging.WARNING):
        dm = datamodule(coco_root)
    assert "1 boxes reach outside their image and were clipped" in caplog.text and "annotation 1000" in caplog.text
    boxes = torch.cat([dm.val_set[i]["target"]["boxes"] for i in range(len(dm.val_set))])
    assert boxes[:, 2].max() <= 64 and [50.0, 40.0, 64.0, 50.0] in boxes.tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["annotations"][0].update(bbox=[1.0, 2.0, 0.0, 5.0]),
            r"annotation 1000 \(image 001.png.*empty box",
        ),
        (lambda d: d["annotations"][1].update(category_id=5), r"annotation 1001 .*unknown category id 5"),
        (lambda d: d["images"][3].update(file_name="missing.png"), r"missing.png \(image id 103\) does not exist"),
        (lambda d: d["annotations"][0].update(bbox=[70.0, 2.0, 5.0, 5.0]), r"annotation 1000 .*outside the 64x64"),
    ],
)
def test_bad_annotations_name_the_annotation_or_image(coco_root, change, message):
    edit_json(coco_root / "annotations" / "instances_train2017.json", change)
    with pytest.raises(DataSourceError, match=message):
        datamodule(coco_root)


def test_empty_boxes_can_be_dropped(coco_root, caplog):
    edit_json(
        coco_root / "annotations" / "instances_train2017.json",
        lambda d: d["annotations"][0].update(bbox=[1.0, 2.0, 0.0, 5.0]),
    )
    dm = datamodule(coco_root, drop_empty_boxes=True)
    assert "1 empty boxes dropped" in caplog.text and len(dm.train_set) == 6


def hub_style_dataset(count: int, seed: int, xyxy: bool = False) -> datasets.Dataset:
    rows = {"image": [], "image_id": [], "objects": []}
    for i in range(count):
        scene = make_scene(np.random.default_rng([seed, i]), image_size=48, task="detection")
        boxes = [list(map(float, s.box)) for s in scene.instances]
        if not xyxy:
            boxes = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes]
        rows["image"].append(Image.fromarray(scene.image))
        rows["image_id"].append(500 + i)
        rows["objects"].append({"bbox": boxes, "category": [s.label for s in scene.instances]})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "objects": {
                "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                "category": datasets.List(datasets.ClassLabel(names=list(SHAPE_CLASSES))),
            },
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def test_saved_hugging_face_dataset_with_objects(tmp_path):
    saved = tmp_path / "saved"
    datasets.DatasetDict(train=hub_style_dataset(4, 0), validation=hub_style_dataset(3, 1)).save_to_disk(str(saved))
    dm = datamodule(saved, with_masks=False, hflip=0.0)
    assert dm.class_names == list(SHAPE_CLASSES) and dm.category_ids == [0, 1, 2, 3]
    scene = make_scene(np.random.default_rng([1, 0]), image_size=48, task="detection")
    target = dm.val_set[0]["target"]
    assert target["image_id"] == 500 and "masks" not in target
    torch.testing.assert_close(target["boxes"], torch.tensor([s.box for s in scene.instances]).float())
    assert target["labels"].tolist() == [s.label + 1 for s in scene.instances]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"][0].shape == (3, 48, 48)


def test_hub_objects_with_xyxy_boxes_and_custom_names(tmp_path):
    ds = hub_style_dataset(4, 0, xyxy=True).rename_column("objects", "annots")
    ds.save_to_disk(str(tmp_path / "saved"))
    dm = datamodule(
        tmp_path / "saved", with_masks=False, objects_column="annots", bbox_format="xyxy", val_fraction=0.25
    )
    assert len(dm.train_set) == 3 and len(dm.val_set) == 1
    row = dm._records["val"][0]
    scene = make_scene(np.random.default_rng([0, row.image_id - 500]), image_size=48, task="detection")
    torch.testing.assert_close(dm.val_set[0]["target"]["boxes"], torch.tensor([s.box for s in scene.instances]).float())
