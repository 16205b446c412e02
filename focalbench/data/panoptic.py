"""Panoptic segmentation data: a COCO panoptic folder (:mod:`focalbench.data.panoptic_format`) or the same content as
a Hugging Face data set (:mod:`focalbench.data.panoptic_hf`).

Each example's ids are renumbered 1..n in the order of ``segments_info`` (0 stays void), so the map is small enough
for the image transforms; classes become indices 0..K-1 in the order of the category ids. Training (large-scale
jitter as Mask2Former's COCO recipe: rescale to ``image_size`` × U(``scale_range``), random ``image_size`` crop, flip,
padding = void) keeps crowd segments in ``segments_info`` flagged ``iscrowd`` (the task leaves them out of the
targets); evaluation keeps the original size for the metric, which treats crowd regions as the COCO evaluation does.
A PNG whose size differs from its image, or with ids missing from ``segments_info``, stops the run naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import albumentations as A
import cv2
import datasets
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset

from focalbench.data.base import BaseDataModule, ImageFolderForPredict
from focalbench.data.coco import read_coco_json
from focalbench.data.images import describe_source, read_rgb
from focalbench.data.panoptic_format import (
    PanopticCategories,
    PanopticRecord,
    find_panoptic_split,
    panoptic_ids,
    panoptic_records,
    read_segments,
)
from focalbench.data.panoptic_hf import class_names_of, open_panoptic_source, segment_rows, things_of
from focalbench.data.seg_transforms import CatMaxRatioCrop, RescaleToRange, segmentation_eval_transform
from focalbench.data.segmentation import collate_list
from focalbench.data.sources import DataSourceError, _is_saved_dataset, eval_split_names, train_val_splits
from focalbench.data.transforms import SeededTransform
from focalbench.errors import ConfigError


class PanopticDataset(Dataset):
    """Records as ``{"image", "segments", "segments_info", "image_id", "file_name"}``: the transformed image, the
    renumbered id map (int64, 0 = void), its segments (ids 1..n, class indices, ``iscrowd``). ``rows``: the Hugging
    Face data set (columns ``image``, ``panoptic``, undecoded) the records' rows refer to; None for files."""

    def __init__(
        self, records: list[PanopticRecord], transform: Callable, rows: datasets.Dataset | None = None
    ) -> None:
        self.records = records
        self.transform = transform
        self.rows = rows

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, record: PanopticRecord) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
        if self.rows is None:
            return read_rgb(record.image), panoptic_ids(record.png), (str(record.png), str(record.image))
        row = self.rows[record.image]
        where = (describe_source(row["panoptic"], record.png), describe_source(row["image"], record.image))
        return read_rgb(row["image"], record.image), panoptic_ids(row["panoptic"], record.png), where

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image, ids, where = self._read(record)
        segments, info = read_segments(ids, record.segments, image.shape[:2], where)
        out = self.transform(image=image, mask=segments)
        return {
            "image": out["image"],
            "segments": torch.as_tensor(np.asarray(out["mask"]), dtype=torch.long),
            "segments_info": info,
            "image_id": record.image_id,
            "file_name": Path(where[1]).name,
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
    """Panoptic data: ``root`` is a COCO panoptic folder (see the module docstring), a ``Dataset.save_to_disk``
    folder, or ``demo`` (the embedded panoptic demo scenes); ``dataset`` a hub id. A Hugging Face data set holds the
    same content in the columns ``image_column``, ``panoptic_column`` and ``segments_column``
    (:mod:`focalbench.data.panoptic_hf`). Exposes ``class_names``, ``num_classes`` and ``things`` (per class,
    from ``isthing``), read from the categories or the features, not from the images.

    Args:
        scale_range: large-scale-jitter range of the training rescale (0.1–2.0 for COCO).
        hflip: horizontal flip probability.
        val_fraction: held-out fraction when there are no validation annotations (or split).
        image_column / panoptic_column / segments_column: a Hugging Face data set's column names.
        class_names: class names when ``category_id`` has no ``ClassLabel`` feature (category id k = class k).
        train_split / val_split: a Hugging Face data set's split names (by default ``train`` / ``validation``).
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
        image_column: str = "image",
        panoptic_column: str = "panoptic",
        segments_column: str = "segments_info",
        class_names: Sequence[str] | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, image_size, predict_root, seed)
        self.scale_range = scale_range
        self.hflip = hflip
        self.val_fraction = val_fraction
        self.columns = {"image_column": image_column, "panoptic_column": panoptic_column,
                        "segments_column": segments_column}  # fmt: skip
        self.given_class_names = list(class_names) if class_names else None
        self.train_split = train_split
        self.val_split = val_split

    @property
    def data_root(self) -> str | None:
        if self.root != "demo":
            return self.root
        from focalbench.data.demo_panoptic import panoptic_demo_root

        return str(panoptic_demo_root())

    # ------------------------------------------------------------------ a COCO panoptic folder
    @cached_property
    def _files(self) -> dict[str, tuple[Path, Path, Path]] | None:
        """``{split: (json, PNG folder, image folder)}`` of a COCO panoptic folder; None for Hugging Face data."""
        if self.data_root is None and self.dataset is None:
            raise DataSourceError(
                "no panoptic data: set data.root (a COCO panoptic folder with annotations/panoptic_*.json, or a "
                "Dataset.save_to_disk folder) or data.dataset (a Hugging Face hub id)"
            )
        if self.dataset is not None or _is_saved_dataset(Path(self.data_root).expanduser()):
            return None
        root = Path(self.data_root).expanduser()
        found = {split: find_panoptic_split(root, split) for split in ("train", "val")}
        found = {split: files for split, files in found.items() if files is not None}
        if "train" not in found and "val" not in found:
            raise DataSourceError(
                f"data.root {root}: no annotations/panoptic_train2017.json or panoptic_val2017.json (COCO panoptic), "
                f"and not a folder written by Dataset.save_to_disk"
            )
        return found

    @cached_property
    def _json(self) -> dict[str, dict]:
        return {split: read_coco_json(files[0], "panoptic") for split, files in self._files.items()}

    # ------------------------------------------------------------------ a Hugging Face data set
    @cached_property
    def _hf_source(self) -> datasets.DatasetDict:
        return open_panoptic_source(self.data_root, self.dataset, self.columns)

    @cached_property
    def _hf_splits(self) -> dict[str, datasets.Dataset]:
        source = self._hf_source
        train, val = train_val_splits(source, self.train_split, self.val_split, self.val_fraction, self.seed)
        test = eval_split_names(source, self.val_split).get("test")
        return {"train": train, "val": val, **({"test": source[test]} if test else {})}

    @cached_property
    def _hf_class_names(self) -> list[str]:
        return class_names_of(next(iter(self._hf_source.values())).features, self.given_class_names)

    @cached_property
    def _hf_rows(self) -> dict[str, list[tuple[int, list[dict]]]]:
        names = self._hf_class_names
        return {split: segment_rows(ds, names, f"split '{split}'") for split, ds in self._hf_splits.items()}

    # ------------------------------------------------------------------ classes and records
    @cached_property
    def categories(self) -> PanopticCategories:
        if self._files is None:
            names = self._hf_class_names
            things = things_of([row for rows in self._hf_rows.values() for row in rows], names)
            return PanopticCategories(tuple(range(len(names))), tuple(names), things)
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
        if self.categories.things is None:
            raise DataSourceError(
                "which classes are things is not known: the segments_info of the data set carry no 'isthing'; set "
                "model.thing_classes to the names of the thing classes"
            )
        return list(self.categories.things)

    @cached_property
    def records(self) -> dict[str, list[PanopticRecord]]:
        if self._files is None:
            return {
                split: [PanopticRecord(image_id, row, row, segments) for row, (image_id, segments) in enumerate(rows)]
                for split, rows in self._hf_rows.items()
            }
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
        if self._files is None:
            return {}
        return {Path(r.image).name: r.image_id for records in self.records.values() for r in records}

    def _dataset(self, split: str, transform: Callable) -> PanopticDataset:
        rows = None if self._files is not None else self._hf_splits[split].select_columns(["image", "panoptic"])
        return PanopticDataset(self.records[split], transform, rows)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        if self.val_set is None:
            self.val_set = self._dataset("val", self.eval_transform())
        if self.test_set is None and stage in (None, "test") and "test" in self.records:
            self.test_set = self._dataset("test", self.eval_transform())
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._dataset("train", self.train_transform())

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
