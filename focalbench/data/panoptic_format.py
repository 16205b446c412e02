"""The COCO panoptic format, as users download it::

    ROOT/annotations/panoptic_{train,val}2017.json     images, annotations (file_name, segments_info), categories
    ROOT/annotations/panoptic_{train,val}2017/*.png    (or ROOT/panoptic_{train,val}2017/) RGB segment ids
    ROOT/{train,val}2017/*.jpg                         the images

A PNG pixel's segment id is ``R + 256·G + 256²·B``, 0 = void; ``segments_info`` lists each segment's ``id``,
``category_id`` and ``iscrowd``; categories carry ``isthing``. Names without ``2017`` (``panoptic_train.json``,
``train/``) work too, as does any data in the same format (custom panoptic data). Here: the id encoding, the
categories, the per-image records and the checked, renumbered segment-id maps (:func:`read_segments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from focalbench.data.images import describe_source, open_image
from focalbench.data.sources import DataSourceError


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
    """Categories sorted by id: class index k has ``ids[k]``, ``names[k]``, ``things[k]`` (COCO ``isthing``;
    ``things`` None when the data does not say)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    things: tuple[bool, ...] | None

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
    """One image, its segment ids and its segments (``id``, class index ``category_id``, ``iscrowd``): ``image``
    and ``png`` are file paths (COCO folder) or both the row of a Hugging Face data set."""

    image_id: int
    image: str | int
    png: str | int
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


def panoptic_ids(value: Any, row: int | None = None) -> np.ndarray:
    """An H×W int64 map of segment ids from a COCO panoptic PNG (RGB: :func:`rgb_to_id`), a single-channel image of
    ids, or a 2-D integer array (a data set's ``Array2D`` / nested lists); ``value`` as :func:`open_image` takes."""
    if isinstance(value, (list, np.ndarray, torch.Tensor)):
        ids = np.asarray(value, np.int64)
        if ids.ndim != 2:
            raise DataSourceError(
                f"panoptic map of {describe_source(value, row)} has shape {ids.shape}: expected H×W ids"
            )
        return ids
    image = open_image(value, row)
    if image.mode in ("RGB", "RGBA"):
        return rgb_to_id(np.asarray(image.convert("RGB")))
    return np.asarray(image).astype(np.int64)


def read_segments(ids: np.ndarray, segments: list[dict], image_shape: Sequence[int], where: tuple[str, str]) -> tuple[
    np.ndarray, list[dict]
]:  # fmt: skip
    """``ids`` renumbered 1..n in the order of ``segments`` (0 = void; int32) and the renumbered segments, checked
    against the image's shape and the listed ids; ``where``: (the ids' name, the image's name) for errors."""
    if ids.shape != tuple(image_shape):
        raise DataSourceError(
            f"panoptic PNG {where[0]} is {ids.shape[1]}x{ids.shape[0]} (WxH) but its image {where[1]} is "
            f"{image_shape[1]}x{image_shape[0]}"
        )
    listed = {s["id"]: k + 1 for k, s in enumerate(segments)}
    present = np.unique(ids)
    unknown = [int(i) for i in present if i != 0 and i not in listed]
    if unknown:
        raise DataSourceError(f"panoptic PNG {where[0]}: segment ids {unknown[:5]} are not in its segments_info")
    lookup = np.zeros(len(present), np.int32)
    for k, value in enumerate(present):
        lookup[k] = listed.get(int(value), 0)
    compact = lookup[np.searchsorted(present, ids)]
    return compact, [{**s, "id": listed[s["id"]]} for s in segments]
