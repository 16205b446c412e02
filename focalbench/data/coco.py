"""Detection annotations in the COCO format: reading ``instances_*.json`` (or Hugging Face ``objects`` rows) into
checked per-image records, the category mapping, and mask decoding.

Both sources end as :class:`ImageRecord` lists whose annotations are COCO dicts (``id``, ``category_id``, ``bbox``
as xywh, ``iscrowd``, ``area``, optional ``segmentation``), so one data set class serves both. Checks happen once,
at set-up, and errors name the annotation and the image:

- an unknown category id, a box of zero or negative width/height, a missing image file: ``DataSourceError``;
- a box reaching outside its image (``width``/``height`` known): clipped to the image, with one warning that
  counts them and names the first few (COCO itself has boxes that overshoot by a fraction of a pixel);
  a box wholly outside its image is an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from pycocotools import mask as mask_utils

from focalbench.data.sources import DataSourceError

log = logging.getLogger(__name__)


@dataclass
class ImageRecord:
    """One image and its annotations. ``source`` is a file path (COCO folder) or a row of a ``datasets`` split;
    ``height``/``width`` may be unknown (None) for hub data without size columns."""

    image_id: int
    file_name: str
    source: Any
    height: int | None = None
    width: int | None = None
    annotations: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Categories:
    """The data's categories (ids in any order, possibly non-contiguous) and the model's labels 1..K (0 is the
    background of torchvision's detectors), sorted by id."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, categories: list[dict]) -> Categories:
        ordered = sorted(categories, key=lambda c: c["id"])
        if not ordered:
            raise DataSourceError("the annotations list no categories")
        ids = [int(c["id"]) for c in ordered]
        if len(set(ids)) != len(ids):
            raise DataSourceError(f"duplicate category ids in the annotations: {ids}")
        return cls(tuple(ids), tuple(str(c.get("name", c["id"])) for c in ordered))

    def label(self, category_id: int) -> int:
        return self._labels[int(category_id)]

    def category_id(self, label: int) -> int:
        return self.ids[int(label) - 1]

    @property
    def _labels(self) -> dict[int, int]:
        return {cid: i + 1 for i, cid in enumerate(self.ids)}


def describe(ann: dict, record: ImageRecord) -> str:
    return f"annotation {ann['id']} (image {record.file_name}, id {record.image_id})"


# ---------------------------------------------------------------------------- COCO folders
def find_coco_split(
    root: Path, split: str, annotations: str | None = None, images: str | None = None
) -> tuple[Path, Path] | None:
    """``(annotation json, image folder)`` of ``split`` under a COCO-layout ``root``, or None.

    Explicit names (relative to ``root`` or absolute) win; otherwise ``annotations/instances_{split}2017.json`` or
    ``annotations/instances_{split}.json`` (or a single ``annotations/instances_{split}*.json``), with the images in
    the folder named after the json's suffix (``val2017/``), ``{split}/`` or ``images/`` + those names.
    """
    if annotations is not None:
        json_path = root / annotations
        if not json_path.is_file():
            raise DataSourceError(f"annotation file '{json_path}' (data.{split}_annotations) does not exist")
    else:
        folder = root / "annotations"
        candidates = [folder / f"instances_{split}2017.json", folder / f"instances_{split}.json"]
        json_path = next((p for p in candidates if p.is_file()), None)
        if json_path is None:
            globbed = sorted(folder.glob(f"instances_{split}*.json"))
            json_path = globbed[0] if len(globbed) == 1 else None
        if json_path is None:
            return None
    if images is not None:
        image_dir = root / images
    else:
        stem = json_path.stem.removeprefix("instances_")
        names = dict.fromkeys([stem, split])
        options = [root / n for n in names] + [root / "images" / n for n in names] + [root / "images", root]
        image_dir = next(p for p in options if p.is_dir())
    return json_path, image_dir


def read_coco_json(path: Path, kind: str = "instances") -> dict:
    """A COCO annotation file (``kind``: instances or panoptic), checked to hold images, annotations and categories."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataSourceError(f"cannot read the COCO {kind} annotations {path}: {err}") from err
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataSourceError(f"{path} is not a COCO {kind} file: no '{key}' list")
    return data


def coco_records(data: dict, image_dir: Path, where: str) -> list[ImageRecord]:
    """Per-image records of a COCO instances dict, images in ``image_dir`` (checked to exist)."""
    records: dict[int, ImageRecord] = {}
    for image in data["images"]:
        path = image_dir / image["file_name"]
        if not path.is_file():
            raise DataSourceError(f"{where}: image file {path} (image id {image['id']}) does not exist")
        records[image["id"]] = ImageRecord(
            image["id"], image["file_name"], str(path), image.get("height"), image.get("width")
        )
    for ann in data["annotations"]:
        record = records.get(ann["image_id"])
        if record is None:
            raise DataSourceError(
                f"{where}: annotation {ann.get('id')} refers to image id {ann['image_id']}, not listed"
            )
        record.annotations.append(ann)
    return list(records.values())


# ---------------------------------------------------------------------------- Hugging Face `objects`
def _unwrap(feature: Any) -> Any:
    while isinstance(feature, (datasets.Sequence, datasets.List, datasets.LargeList)):
        feature = feature.feature
    return feature


def objects_class_label(features: datasets.Features, objects_column: str, category_key: str) -> list[str] | None:
    """Category names of a ``ClassLabel`` inside the ``objects`` feature (either nesting), or None."""
    objects = _unwrap(features.get(objects_column))
    category = _unwrap(objects.get(category_key)) if isinstance(objects, dict) else None
    return list(category.names) if isinstance(category, datasets.ClassLabel) else None


def _rows_of_objects(cell: Any) -> list[dict]:
    """One row's objects as a list of dicts, from the columnar (dict of lists) or list-of-dicts layout."""
    if isinstance(cell, dict):
        keys = list(cell)
        return [dict(zip(keys, values)) for values in zip(*(cell[k] for k in keys))] if keys else []
    return list(cell or [])


def objects_records(
    ds: datasets.Dataset,
    *,
    objects_column: str,
    bbox_key: str,
    category_key: str,
    bbox_format: str,
    category_names: Sequence[str],
) -> list[ImageRecord]:
    """Records of a data set with an ``objects`` column (``{bbox: [[x, y, w, h], ...], category: [...]}``);
    optional per-object ``id``, ``area``, ``iscrowd``, ``segmentation`` and per-row ``image_id``, ``width``,
    ``height`` columns are used when present. String categories are looked up in ``category_names``."""
    columns = ds.column_names
    image_ids = ds["image_id"] if "image_id" in columns else list(range(len(ds)))
    widths = ds["width"] if "width" in columns else [None] * len(ds)
    heights = ds["height"] if "height" in columns else [None] * len(ds)
    records = []
    for row, cell in enumerate(ds[objects_column]):
        record = ImageRecord(int(image_ids[row]), f"row {row}", row, heights[row], widths[row])
        for k, obj in enumerate(_rows_of_objects(cell)):
            for key in (bbox_key, category_key):
                if key not in obj:
                    raise DataSourceError(f"row {row}: object {k} has no '{key}' (keys: {sorted(obj)})")
            category = obj[category_key]
            if isinstance(category, str):
                if category not in category_names:
                    raise DataSourceError(f"row {row} object {k}: unknown category '{category}' ({category_names})")
                category = list(category_names).index(category)
            x1, y1, a, b = (float(v) for v in obj[bbox_key])
            bbox = [x1, y1, a - x1, b - y1] if bbox_format == "xyxy" else [x1, y1, a, b]
            ann = {"id": obj.get("id", f"{row}.{k}"), "category_id": int(category), "bbox": bbox}
            ann["iscrowd"] = int(obj.get("iscrowd") or 0)
            if obj.get("area") is not None:
                ann["area"] = float(obj["area"])
            if obj.get("segmentation"):
                ann["segmentation"] = obj["segmentation"]
            record.annotations.append(ann)
        records.append(record)
    return records


# ---------------------------------------------------------------------------- checks and masks
def check_records(
    records: list[ImageRecord], categories: Categories, where: str, drop_empty_boxes: bool = False
) -> list[ImageRecord]:
    """Validate (in place) categories and boxes; clip boxes that overshoot a known image size (one warning)."""
    known = set(categories.ids)
    clipped, dropped = [], []
    for record in records:
        kept = []
        for ann in record.annotations:
            if ann.get("category_id") not in known:
                raise DataSourceError(
                    f"{where}: {describe(ann, record)} has unknown category id {ann.get('category_id')}; "
                    f"the categories are {list(known)}"
                )
            x, y, w, h = (float(v) for v in ann["bbox"])
            if record.width is not None and record.height is not None:
                x2, y2 = min(x + w, record.width), min(y + h, record.height)
                nx, ny = max(x, 0.0), max(y, 0.0)
                if (nx, ny, x2, y2) != (x, y, x + w, y + h) and w > 0 and h > 0:
                    if x2 <= nx or y2 <= ny:
                        raise DataSourceError(
                            f"{where}: {describe(ann, record)} has box {ann['bbox']} (xywh) outside the "
                            f"{record.width}x{record.height} image"
                        )
                    clipped.append(describe(ann, record))
                    ann = {**ann, "bbox": [nx, ny, x2 - nx, y2 - ny]}
                    x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                if drop_empty_boxes:
                    dropped.append(describe(ann, record))
                    continue
                raise DataSourceError(
                    f"{where}: {describe(ann, record)} has an empty box {ann['bbox']} (xywh: width and height must "
                    "be > 0); fix it, or set data.drop_empty_boxes true to drop such boxes with a warning"
                )
            ann.setdefault("area", w * h)
            ann["iscrowd"] = int(ann.get("iscrowd") or 0)
            kept.append(ann)
        record.annotations = kept
    if clipped:
        log.warning(
            "%s: %d boxes reach outside their image and were clipped, e.g. %s", where, len(clipped), clipped[:3]
        )
    if dropped:
        log.warning("%s: %d empty boxes dropped (data.drop_empty_boxes), e.g. %s", where, len(dropped), dropped[:3])
    return records


def decode_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """uint8 H×W mask of an annotation (polygons, uncompressed or compressed RLE), as pycocotools' ``annToMask``;
    without a segmentation, the box is filled."""
    segmentation = ann.get("segmentation")
    if not segmentation:
        x, y, w, h = ann["bbox"]
        mask = np.zeros((height, width), np.uint8)
        mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = 1
        return mask
    if isinstance(segmentation, list):  # polygons: one object may have several parts
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(np.uint8)


def encode_mask(mask: np.ndarray) -> dict:
    """COCO compressed RLE (``counts`` as str, JSON-ready) of a H×W mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
