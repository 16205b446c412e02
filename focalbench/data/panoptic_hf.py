"""Panoptic data as a Hugging Face data set (a hub id or a ``Dataset.save_to_disk`` folder), with the content of
COCO panoptic in three columns:

- ``image``: the image;
- ``panoptic``: the segment ids, as a COCO panoptic PNG (RGB, id = ``R + 256·G + 256²·B``), a single-channel image
  of ids, or a 2-D integer array (``Array2D`` / nested lists); 0 = void;
- ``segments_info``: the image's segments, ``id`` (as in ``panoptic``), ``category_id`` (a ``ClassLabel``, or the
  class index into ``data.class_names``), ``iscrowd`` (optional, 0) and ``isthing`` (optional; see below), as a list
  of dicts or in the columnar layout ``datasets.Sequence`` gives (a dict of lists).

Class names come from the ``category_id`` ``ClassLabel`` (else ``data.class_names``); class k is category id k.
Things and stuff come from the segments' ``isthing`` (detectron2's per-segment flag, read from the ``segments_info``
column alone, no image decoded); without it, ``model.thing_classes`` names the thing classes. An optional
``image_id`` column gives the image ids (else the row number + 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from focalbench.data.coco import _rows_of_objects, objects_class_label
from focalbench.data.sources import DataSourceError, load_source, require_columns

COCO_PANOPTIC_ADVICE = (
    "download COCO panoptic (panoptic_annotations_trainval2017.zip, train2017.zip, val2017.zip from "
    "https://cocodataset.org/#download) and pass --data.root /path/to/coco (annotations/panoptic_{train,val}2017.json "
    "+ their PNG folders + train2017/, val2017/), or a folder written by Dataset.save_to_disk with columns image, "
    "panoptic, segments_info"
)


def open_panoptic_source(root: str | None, dataset: str | None, columns: dict[str, str]) -> datasets.DatasetDict:
    """The splits of a ``save_to_disk`` folder (``root``) or a hub data set (``dataset``), with the configured
    columns renamed to ``image``, ``panoptic``, ``segments_info`` and the images left undecoded (decoded by us, so
    a bad file is named). ``columns``: ``{data key: column name}`` in that order."""
    try:
        source = load_source(root, dataset)
    except DataSourceError as err:
        if root is not None:
            raise
        cause = err.__cause__ or err
        raise DataSourceError(
            f"could not load the hub data set '{dataset}' ({type(cause).__name__}: {str(cause)[:200]}). Either "
            f"{COCO_PANOPTIC_ADVICE}; or let `datasets` reach the hub (network access, HF_HUB_OFFLINE/"
            f"HF_DATASETS_OFFLINE unset) or find it in its cache."
        ) from err
    out = {}
    for name, ds in source.items():
        require_columns(ds, columns, f"split '{name}'")
        keep = ["image_id"] if "image_id" in ds.column_names else []
        ds = ds.select_columns([*columns.values(), *keep])
        standard = ("image", "panoptic", "segments_info")
        ds = ds.rename_columns({column: key for key, column in zip(standard, columns.values()) if column != key})
        for column in ("image", "panoptic"):
            if isinstance(ds.features[column], datasets.Image):
                ds = ds.cast_column(column, datasets.Image(decode=False))
        out[name] = ds
    return datasets.DatasetDict(out)


def class_names_of(features: datasets.Features, given: Sequence[str] | None) -> list[str]:
    """The ``category_id`` ``ClassLabel``'s names, else ``given``; an error saying how to name the classes."""
    names = objects_class_label(features, "segments_info", "category_id") or (list(given) if given else None)
    if not names:
        raise DataSourceError(
            "the panoptic classes are not known: segments_info's category_id has no ClassLabel feature; set "
            "data.class_names (category id k is class_names[k])"
        )
    return names


def things_of(rows: Sequence[tuple[int, list[dict]]], names: Sequence[str]) -> tuple[bool, ...] | None:
    """Per class, whether it is a thing, from the segments' ``isthing`` flags (:func:`segment_rows` of every split;
    classes that never appear count as things); None when the segments carry no ``isthing``."""
    flags: dict[int, set[bool]] = {}
    for _, segments in rows:
        for segment in segments:
            if segment["isthing"] is None:
                return None
            flags.setdefault(segment["category_id"], set()).add(segment["isthing"])
    mixed = [names[k] for k, seen in sorted(flags.items()) if len(seen) > 1]
    if mixed:
        raise DataSourceError(f"segments_info: classes {mixed[:5]} are marked isthing in some segments but not all")
    return tuple(all(flags.get(k, {True})) for k in range(len(names)))


def segment_rows(ds: datasets.Dataset, names: Sequence[str], where: str) -> list[tuple[int, list[dict]]]:
    """Per row, its image id and its segments (``id``, class index ``category_id``, ``iscrowd``, ``isthing`` or
    None), checked."""
    image_ids = ds["image_id"] if "image_id" in ds.column_names else range(1, len(ds) + 1)
    rows = []
    for row, (image_id, cell) in enumerate(zip(image_ids, ds["segments_info"])):
        segments = []
        for k, segment in enumerate(_rows_of_objects(cell)):  # from either layout
            missing = [key for key in ("id", "category_id") if segment.get(key) is None]
            if missing:
                raise DataSourceError(f"{where} row {row}: segment {k} has no {missing} (keys: {sorted(segment)})")
            category = segment["category_id"]
            if isinstance(category, str):
                if category not in names:
                    raise DataSourceError(f"{where} row {row}: unknown category '{category}'; the classes are {names}")
                category = list(names).index(category)
            if not 0 <= int(category) < len(names):
                raise DataSourceError(
                    f"{where} row {row}: segment {segment['id']} has category id {category}, outside the "
                    f"{len(names)} classes 0..{len(names) - 1}"
                )
            isthing = segment.get("isthing")
            segments.append({
                "id": int(segment["id"]),
                "category_id": int(category),
                "iscrowd": int(segment.get("iscrowd") or 0),
                "isthing": None if isthing is None else bool(isthing),
            })  # fmt: skip
        rows.append((int(image_id), segments))
    return rows
