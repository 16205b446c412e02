"""Image classification data: an image folder, a CSV of path,label, a saved dataset or a hub id."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cached_property

import datasets

from focalbench.data.base import BaseDataModule
from focalbench.data.images import ImageDecodeError, open_image, read_rgb
from focalbench.data.sources import (
    DataSourceError,
    eval_split_names,
    load_source,
    pick_split,
    require_columns,
    train_val_splits,
)
from focalbench.data.transforms import classification_eval_transform, classification_train_transform

log = logging.getLogger(__name__)


class ClassificationDataModule(BaseDataModule):
    """Classification data over Hugging Face ``datasets``, transformed with albumentations.

    ``num_classes`` and ``class_names`` come from the data (``ClassLabel`` features, class folders, or the sorted
    label names of a CSV), so the config states them once; ``cli.py`` links them to the model.

    Args:
        image_column / label_column: column names in the data set.
        train_split / val_split: split names (default: ``train`` and the first of validation/val/valid/test; with
            no validation split a deterministic ``val_fraction`` is held out).
        class_names: names for integer labels that carry none (e.g. a CSV with numeric labels).
        min_crop_scale, auto_augment, random_erasing, crop_pct: the paper's recipe (random-resized crops of 8-100 %
            of the image, timm RandAugment, erasing 0.25, evaluation crop 0.875).
        augment: False trains on the evaluation transform (no randomness: linear probes, exact-resume checks).
        skip_corrupt: drop unreadable images at setup (counted and reported) instead of failing on the first one;
            ``predict`` likewise leaves them out, named in the log and in ``skipped.txt`` beside the outputs.
        streaming: read the data lazily (``datasets`` streaming: data larger than the disk); needs train and
            validation splits and class names from the data's features or ``class_names``; each DDP rank reads its
            own shard (``split_dataset_by_node``). Labels and images are then checked as they are read.
    """

    demo_subdir = "classification"

    def __init__(
        self,
        root: str | None = None,
        dataset: str | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        image_size: int = 224,
        predict_root: str | None = None,
        seed: int = 0,
        image_column: str = "image",
        label_column: str = "label",
        train_split: str | None = None,
        val_split: str | None = None,
        val_fraction: float = 0.1,
        class_names: Sequence[str] | None = None,
        augment: bool = True,
        min_crop_scale: float = 0.08,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        random_erasing: float = 0.25,
        crop_pct: float = 0.875,
        skip_corrupt: bool = False,
        streaming: bool = False,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, image_size, predict_root, seed)
        self.image_column = image_column
        self.label_column = label_column
        self.train_split = train_split
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.given_class_names = list(class_names) if class_names else None
        self.augment = augment
        self.min_crop_scale = min_crop_scale
        self.auto_augment = auto_augment
        self.random_erasing = random_erasing
        self.crop_pct = crop_pct
        self.skip_corrupt = skip_corrupt
        self.streaming = streaming
        self.skipped_images = 0

    # ------------------------------------------------------------------ the data
    @cached_property
    def _source(self) -> datasets.DatasetDict:
        source = load_source(self.data_root, self.dataset, streaming=self.streaming)
        for name, ds in source.items():
            if not self.streaming and len(ds) == 0:
                raise DataSourceError(f"the {name} split is empty")
            require_columns(ds, {"image_column": self.image_column, "label_column": self.label_column}, name)
        return source

    @cached_property
    def class_names(self) -> list[str]:
        """Class names, from the data's ``ClassLabel`` feature, ``class_names``, or the sorted label strings."""
        features = next(iter(self._source.values())).features or {}
        if isinstance(features.get(self.label_column), datasets.ClassLabel):
            return list(features[self.label_column].names)
        if self.given_class_names:
            return self.given_class_names
        if self.streaming:
            raise DataSourceError("a streamed data set without ClassLabel features needs data.class_names")
        values = set().union(*(set(ds[self.label_column]) for ds in self._source.values()))
        if all(isinstance(v, str) for v in values):
            return sorted(values)
        return [str(i) for i in range(int(max(values)) + 1)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def _encoded(self) -> datasets.DatasetDict:
        return datasets.DatasetDict({name: self._encode_labels(ds, name) for name, ds in self._source.items()})

    @cached_property
    def _splits(self) -> tuple[datasets.Dataset, datasets.Dataset]:
        if self.streaming:
            return self._stream_splits()
        return train_val_splits(self._encoded, self.train_split, self.val_split, self.val_fraction, self.seed, "label")

    def _label_index(self, value, where: str) -> int:
        """A label (class name or id) as an index in [0, num_classes); the error names where it was found."""
        names = self.class_names
        if isinstance(value, str):
            if value not in names:
                raise DataSourceError(f"{where}: unknown class name '{value}'; known classes: {names}")
            return names.index(value)
        if value is None or not 0 <= int(value) < len(names):
            raise DataSourceError(f"{where}: label {value} out of range for {len(names)} classes (0..{len(names) - 1})")
        return int(value)

    def _encode_labels(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        """Integer ``label`` in [0, num_classes), checked once over the whole column (errors name row and value)."""
        encoded = [self._label_index(value, f"{split} row {row}") for row, value in enumerate(ds[self.label_column])]
        ds = ds.remove_columns(self.label_column).add_column("label", encoded)
        return ds.cast_column("label", datasets.ClassLabel(names=self.class_names))

    def _stream_splits(self) -> tuple[datasets.IterableDataset, datasets.IterableDataset]:
        train_name = pick_split(self._source, self.train_split, "train")
        val_name = pick_split(self._source, self.val_split, "val")
        if train_name is None or val_name is None or train_name == val_name:
            raise DataSourceError(
                f"streaming needs separate train and validation splits; the data has {list(self._source)} "
                "(set data.train_split / data.val_split, or turn data.streaming off for a hold-out split)"
            )
        return self._source[train_name], self._source[val_name]

    def _drop_unreadable(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        bad = []
        for row, cell in enumerate(ds[self.image_column]):
            try:
                open_image(cell, row)
            except ImageDecodeError as err:
                bad.append(row)
                log.warning("skipping %s image: %s", split, err)
        self.skipped_images += len(bad)
        return ds.select(sorted(set(range(len(ds))) - set(bad))) if bad else ds

    def _prepare(self, ds: datasets.Dataset, split: str, transform: Callable) -> datasets.Dataset:
        # Images are decoded by us, not by `datasets`, so a bad file is named and 16-bit/RGBA/gray become RGB.
        ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        if self.image_column != "image":
            ds = ds.rename_column(self.image_column, "image")
        if self.streaming:
            label_column = self.label_column

            def apply_one(example: dict) -> dict:
                label = self._label_index(example[label_column], f"{split} example {example['image'].get('path')}")
                return {"image": transform(image=read_rgb(example["image"]))["image"], "label": label}

            return ds.map(apply_one, remove_columns=ds.column_names)
        if self.skip_corrupt:
            ds = self._drop_unreadable(ds, split)
        ds = ds.select_columns(["image", "label"])

        def apply(batch: dict) -> dict:
            images = [transform(image=read_rgb(cell))["image"] for cell in batch["image"]]
            return {"image": images, "label": batch["label"]}

        return ds.with_transform(apply)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or stage == "predict":
            return
        train, val = self._splits
        self.train_set = self._prepare(train, "train", self.train_transform())
        self.val_set = self._prepare(val, "validation", self.eval_transform())
        self.split_names = eval_split_names(self._source, self.val_split)
        test_name = None if self.streaming else self.split_names.get("test")
        if test_name is not None:
            self.test_set = self._prepare(self._encoded[test_name], test_name, self.eval_transform())

    # ------------------------------------------------------------- transforms
    def train_transform(self) -> Callable:
        if not self.augment:
            return self.eval_transform()
        mean, std = self.normalization
        return classification_train_transform(
            self.image_size,
            scale=(self.min_crop_scale, 1.0),
            auto_augment=self.auto_augment,
            random_erasing=self.random_erasing,
            mean=mean,
            std=std,
        )

    def eval_transform(self) -> Callable:
        mean, std = self.normalization
        return classification_eval_transform(self.image_size, crop_pct=self.crop_pct, mean=mean, std=std)
