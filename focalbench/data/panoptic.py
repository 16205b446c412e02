"""Panoptic segmentation data in the COCO panoptic format, as users download it::

    ROOT/annotations/panoptic_{train,val}2017.json     images, annotations (file_name, segments_info), categories
    ROOT/annotations/panoptic_{train,val}2017/*.png    (or ROOT/panoptic_{train,val}2017/) RGB segment ids
    ROOT/{train,val}2017/*.jpg                         the images

A PNG pixel's segment id is ``R + 256·G + 256²·B``, 0 = void; ``segments_info`` lists each segment's ``id``,
``category_id`` and ``iscrowd``; categories carry ``isthing``. Names without ``2017`` (``panoptic_train.json``,
``train/``) work too, as does any data in the same format (custom panoptic data).

Each example's ids are renumbered 1..n in the order of ``segments_info`` (0 stays void), so the map is small enough
for the image transforms; classes become indices 0..K-1 in the order of the category ids. Training (large-scale
jitter as Mask2Former's COCO recipe: rescale to ``image_size`` × U(``scale_range``), random ``image_size`` crop, flip,
padding = void) keeps crowd segments in ``segments_info`` flagged ``iscrowd`` (the task leaves them out of the
targets); evaluation keeps the original size for the metric, which treats crowd regions as the COCO evaluation does.
A PNG whose size differs from its image, or with ids missing from ``segments_info``, stops the run naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset

from focalbench.data.base import BaseDataModule, ImageFolderForPredict
from focalbench.data.images import read_rgb
from focalbench.data.seg_transforms import CatMaxRatioCrop, RescaleToRange, segmentation_eval_transform
from focalbench.data.segmentation import collate_list
from focalbench.data.sources import DataSourceError
from focalbench.data.transforms import SeededTransform
from focalbench.errors import ConfigError


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic segment ids of an H×W×3 uint8 PNG: ``R + 256·G + 256²·B``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb_to_id`: H×W ids to an H×W×3 uint8 image."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)


@dataclass(frozen=True)
class PanopticCategories:
    """Categories sorted by id: class index k has ``ids[k]``, ``names[k]``, ``things[k]`` (COCO ``isthing``)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    things: tuple[bool, ...]

    @classmethod
    def from_coco(cls, categories: list[dict], where: str) -> PanopticCategories:
        ordered = sorted(categories, key=lambda c: c["id"])
        if not ordered:
            raise DataSourceError(f"{where} lists no categories")
        missing = [c.get("id") for c in ordered if "isthing" not in c]
        if missing:
            raise DataSourceError(f"{where}: categories {missing[:5]} have no 'isthing' (1 = thing, 0 = stuff)")
        return cls(
            tuple(int(c["id"]) for c in ordered),
            tuple(str(c.get("name", c["id"])) for c in ordered),
            tuple(bool(c["isthing"]) for c in ordered),
        )

    def index(self, category_id: int, where: str) -> int:
        try:
            return self.ids.index(int(category_id))
        except ValueError:
            known = list(self.ids)
            raise DataSourceError(f"{where}: unknown category id {category_id}; the categories are {known}") from None


@dataclass
class PanopticRecord:
    """One image, its PNG of segment ids and its segments (``id``, class index ``category_id``, ``iscrowd``)."""

    image_id: int
    image: str
    png: str
    segments: list[dict] = field(default_factory=list)


def find_panoptic_split(root: Path, split: str) -> tuple[Path, Path, Path] | None:
    """``(json, PNG folder, image folder)`` of ``split`` in a COCO-panoptic-layout ``root``, or None."""
    folder = root / "annotations"
    json_path = next((p for p in (folder / f"panoptic_{split}2017.json", folder / f"panoptic_{split}.json")
                      if p.is_file()), None)  # fmt: skip
    if json_path is None:
        return None
    stem = json_path.stem  # panoptic_val2017
    pngs = next((p for p in (folder / stem, root / stem) if p.is_dir()), None)
    if pngs is None:
        raise DataSourceError(f"{json_path} has no PNG folder: expected {folder / stem}/ or {root / stem}/")
    name = stem.removeprefix("panoptic_")
    images = next((p for p in (root / name, root / split, root / "images" / name, root / "images" / split)
                   if p.is_dir()), None)  # fmt: skip
    if images is None:
        raise DataSourceError(f"{json_path}: no image folder {root / name}/ (or {root / split}/)")
    return json_path, pngs, images


def read_panoptic_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataSourceError(f"cannot read the COCO panoptic annotations {path}: {err}") from err
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataSourceError(f"{path} is not a COCO panoptic file: no '{key}' list")
    return data


def panoptic_records(
    data: dict, categories: PanopticCategories, pngs: Path, images: Path, where: str
) -> list[PanopticRecord]:
    """Per-image records of a COCO panoptic dict, files checked to exist, categories mapped to class indices."""
    files = {image["id"]: image["file_name"] for image in data["images"]}
    records = []
    for ann in data["annotations"]:
        if ann.get("image_id") not in files:
            raise DataSourceError(f"{where}: annotation {ann.get('file_name')} refers to image id "
                                  f"{ann.get('image_id')}, not listed in 'images'")  # fmt: skip
        image, png = images / files[ann["image_id"]], pngs / ann["file_name"]
        for path in (image, png):
            if not path.is_file():
                raise DataSourceError(f"{where}: file {path} (image id {ann['image_id']}) does not exist")
        segments = []
        for s in ann.get("segments_info", []):
            label = categories.index(s["category_id"], f"{where}: segment {s.get('id')} of {png.name}")
            segments.append({"id": int(s["id"]), "category_id": label, "iscrowd": int(s.get("iscrowd", 0))})
        records.append(PanopticRecord(int(ann["image_id"]), str(image), str(png), segments))
    return records


def read_segments(record: PanopticRecord, image_shape: Sequence[int]) -> tuple[np.ndarray, list[dict]]:
    """The record's PNG as an H×W int32 map with ids renumbered 1..n (0 = void) and the renumbered segments."""
    ids = rgb_to_id(np.asarray(Image.open(record.png).convert("RGB")))
    if ids.shape != tuple(image_shape):
        raise DataSourceError(
            f"panoptic PNG {record.png} is {ids.shape[1]}x{ids.shape[0]} (WxH) but its image {record.image} is "
            f"{image_shape[1]}x{image_shape[0]}"
        )
    listed = {s["id"]: k + 1 for k, s in enumerate(record.segments)}
    present = np.unique(ids)
    unknown = [int(i) for i in present if i != 0 and i not in listed]
    if unknown:
        raise DataSourceError(f"panoptic PNG {record.png}: segment ids {unknown[:5]} are not in its segments_info")
    lookup = np.zeros(len(present), np.int32)
    for k, value in enumerate(present):
        lookup[k] = listed.get(int(value), 0)
    compact = lookup[np.searchsorted(present, ids)]
    return compact, [{**s, "id": listed[s["id"]]} for s in record.segments]


class PanopticDataset(Dataset):
    """Records as ``{"image", "segments", "segments_info", "image_id", "file_name"}``: the transformed image, the
    renumbered id map (int64, 0 = void), its segments (ids 1..n, class indices, ``iscrowd``)."""

    def __init__(self, records: list[PanopticRecord], transform: Callable) -> None:
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = read_rgb(record.image)
        segments, info = read_segments(record, image.shape[:2])
        out = self.transform(image=image, mask=segments)
        return {
            "image": out["image"],
            "segments": torch.as_tensor(np.asarray(out["mask"]), dtype=torch.long),
            "segments_info": info,
            "image_id": record.image_id,
            "file_name": Path(record.image).name,
        }


def collate_train(examples: list[dict]) -> dict:
    """Same-size training crops stacked; segments and names as lists."""
    batch = collate_list(examples)
    batch["image"] = torch.stack(batch["image"])
    batch["segments"] = torch.stack(batch["segments"])
    return batch


def panoptic_train_transform(
    image_size: int, scale_range: Sequence[float] = (0.1, 2.0), hflip: float = 0.5
) -> SeededTransform:
    """Large-scale jitter (detectron2 ``ResizeScale`` + ``FixedSizeCrop``, Mask2Former's COCO recipe): rescale so
    the longer side is ``image_size`` × U(``scale_range``), crop ``image_size`` (smaller where the image is), flip,
    normalise, pad to ``image_size`` (image 0 after normalisation, segments void)."""
    return SeededTransform(
        A.Compose(
            [
                RescaleToRange((image_size, image_size), scale_range),
                CatMaxRatioCrop(image_size, image_size, cat_max_ratio=1.0),
                A.HorizontalFlip(p=hflip),
                A.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
                A.PadIfNeeded(
                    min_height=image_size,
                    min_width=image_size,
                    position="top_left",
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=0,
                ),
                ToTensorV2(),
            ]
        )
    )


class PanopticDataModule(BaseDataModule):
    """COCO panoptic data (see the module docstring): ``root`` is the COCO folder (or ``demo`` for the embedded
    panoptic demo scenes). Exposes ``class_names``, ``num_classes`` and ``things`` (per class, from ``isthing``),
    read from the annotation files' categories.

    Args:
        scale_range: large-scale-jitter range of the training rescale (0.1–2.0 for COCO).
        hflip: horizontal flip probability.
        val_fraction: held-out fraction when there are no validation annotations.
    """

    demo_subdir = "panoptic"

    def __init__(
        self,
        root: str | None = None,
        dataset: str | None = None,
        batch_size: int = 2,
        num_workers: int = 4,
        image_size: int = 1024,
        predict_root: str | None = None,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.1, 2.0),
        hflip: float = 0.5,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, image_size, predict_root, seed)
        if dataset is not None:
            raise DataSourceError("data.dataset: panoptic data is read from a COCO panoptic folder (data.root)")
        self.scale_range = scale_range
        self.hflip = hflip
        self.val_fraction = val_fraction

    @property
    def data_root(self) -> str | None:
        if self.root != "demo":
            return self.root
        from focalbench.data.demo_panoptic import panoptic_demo_root

        return str(panoptic_demo_root())

    @cached_property
    def _files(self) -> dict[str, tuple[Path, Path, Path]]:
        if self.data_root is None:
            raise DataSourceError("panoptic data needs data.root: a COCO panoptic folder (annotations/panoptic_*.json)")
        root = Path(self.data_root).expanduser()
        found = {split: find_panoptic_split(root, split) for split in ("train", "val")}
        found = {split: files for split, files in found.items() if files is not None}
        if "train" not in found and "val" not in found:
            raise DataSourceError(
                f"data.root {root}: no annotations/panoptic_train2017.json or panoptic_val2017.json (COCO panoptic)"
            )
        return found

    @cached_property
    def _json(self) -> dict[str, dict]:
        return {split: read_panoptic_json(files[0]) for split, files in self._files.items()}

    @cached_property
    def categories(self) -> PanopticCategories:
        found = {
            split: PanopticCategories.from_coco(data["categories"], str(self._files[split][0]))
            for split, data in self._json.items()
        }
        if len(set(found.values())) > 1:
            raise DataSourceError("the panoptic splits list different categories")
        return next(iter(found.values()))

    @property
    def class_names(self) -> list[str]:
        return list(self.categories.names)

    @property
    def num_classes(self) -> int:
        return len(self.categories.ids)

    @property
    def things(self) -> list[bool]:
        return list(self.categories.things)

    @cached_property
    def records(self) -> dict[str, list[PanopticRecord]]:
        records = {
            split: panoptic_records(self._json[split], self.categories, pngs, images, f"{path.name}")
            for split, (path, pngs, images) in self._files.items()
        }
        if "val" not in records or "train" not in records:  # a deterministic hold-out of the one split there is
            only = next(iter(records.values()))
            order = np.random.default_rng(self.seed).permutation(len(only))
            count = max(1, round(len(only) * self.val_fraction))
            records = {"train": [only[i] for i in order[count:]], "val": [only[i] for i in order[:count]]}
        return records

    @property
    def image_ids(self) -> dict[str, int]:
        """``image file name -> image id`` of the annotated images (for predictions on those files)."""
        return {Path(r.image).name: r.image_id for records in self.records.values() for r in records}

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        if self.val_set is None:
            self.val_set = PanopticDataset(self.records["val"], self.eval_transform())
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = PanopticDataset(self.records["train"], self.train_transform())

    def collate_fn(self) -> Callable:
        return collate_train

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False, collate_fn=collate_list)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_root is None:
            raise ConfigError("predict needs data.predict_root: a folder of images")
        return self._loader(ImageFolderForPredict(self.predict_root, self.eval_transform()), False, collate_list)

    def train_transform(self) -> Callable:
        return panoptic_train_transform(self.image_size, self.scale_range, self.hflip)

    def eval_transform(self) -> Callable:
        return segmentation_eval_transform()
