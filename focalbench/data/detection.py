"""Object detection / instance segmentation data: a COCO-layout folder, or Hugging Face data with an ``objects``
column (hub id, local folder or ``save_to_disk`` directory); albumentations moves boxes and masks with the image."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import albumentations as A
import datasets
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader

from focalbench.data.base import BaseDataModule
from focalbench.data.coco import (
    Categories,
    ImageRecord,
    check_records,
    coco_records,
    find_coco_split,
    objects_class_label,
    objects_records,
    read_coco_json,
)
from focalbench.data.det_transforms import detr_crop_branch
from focalbench.data.detection_samples import DetectionDataset, PredictImages, collate_lists
from focalbench.data.sources import (
    DataSourceError,
    _is_saved_dataset,
    eval_split_names,
    load_source,
    require_columns,
    train_val_splits,
)
from focalbench.data.transforms import SeededTransform
from focalbench.models.contract import Normalization

COCO_ADVICE = (
    "For COCO 2017, download train2017.zip, val2017.zip and annotations_trainval2017.zip from "
    "https://cocodataset.org/#download, unzip them into one folder and pass --data.root /path/to/coco, which then "
    "holds annotations/instances_{train,val}2017.json + train2017/ + val2017/ (or set data.dataset to a hub data set "
    "with an 'objects' column)."
)


class DetectionDataModule(BaseDataModule):
    """Detection data in the formats users have, with ``num_classes`` / ``class_names`` read from the categories.

    ``root`` is a COCO-layout folder (``annotations/instances_{train,val}2017.json`` + ``{train,val}2017/``, or
    ``instances_{train,val}.json`` + ``{train,val}/``; names settable with ``train_annotations`` …), or a data set
    with an ``objects`` column (``{bbox: [[x, y, w, h], ...], category: [...]}``): a ``save_to_disk`` folder, a
    folder ``datasets`` reads, or ``dataset`` = a hub id. Category ids may be non-contiguous: they become labels
    1..K (sorted by id; 0 is the detectors' background) and are mapped back in predictions (``category_ids``).

    Training: crowd regions dropped, images without annotations kept (background), horizontal flip and an optional
    random-resized crop (``crop_scale``, output ``image_size``) under albumentations ``BboxParams``, which drops boxes
    smaller than ``min_box_area`` pixels after the crop with their masks. Evaluation: original images, crowd regions
    kept with ``iscrowd``. Resizing to the detector's scale is the model's (``min_size`` / ``max_size``).

    Args:
        train_annotations / val_annotations / train_images / val_images: COCO file and folder names (relative to
            ``root``) when auto-detection does not fit.
        image_column / objects_column / bbox_key / category_key / bbox_format: names in ``objects`` data.
        train_split / val_split / val_fraction: splits (a ``val_fraction`` hold-out when there is no validation).
        class_names: names for integer categories without a ``ClassLabel`` feature.
        with_masks: decode instance masks (polygons, RLE; a box-filled mask where an annotation has none).
        hflip: horizontal flip probability (the paper's recipes: 0.5).
        detr_crop: probability of DETR's crop branch (DINO, Deformable DETR: 0.5): the shorter side to one of
            ``detr_crop_resize``, then a random crop of ``detr_crop_size`` (min, max) pixels per side; the detector
            then resizes as for every image (:mod:`focalbench.data.det_transforms`).
        drop_empty_boxes: drop boxes of zero width or height with a warning instead of stopping.
        skip_corrupt: ``predict`` leaves unreadable images out (named in the log and in ``skipped.txt``) instead of
            stopping at the first; training and evaluation data are not filtered (a bad file stops the run).
    """

    demo_subdir = "detection"

    def __init__(
        self,
        root: str | None = None,
        dataset: str | None = None,
        batch_size: int = 2,
        num_workers: int = 4,
        image_size: int = 800,
        predict_root: str | None = None,
        seed: int = 0,
        train_annotations: str | None = None,
        val_annotations: str | None = None,
        train_images: str | None = None,
        val_images: str | None = None,
        image_column: str = "image",
        objects_column: str = "objects",
        bbox_key: str = "bbox",
        category_key: str = "category",
        bbox_format: Literal["xywh", "xyxy"] = "xywh",
        train_split: str | None = None,
        val_split: str | None = None,
        val_fraction: float = 0.1,
        class_names: Sequence[str] | None = None,
        with_masks: bool = True,
        hflip: float = 0.5,
        crop_scale: tuple[float, float] | None = None,
        min_box_area: float = 1.0,
        drop_empty_boxes: bool = False,
        skip_corrupt: bool = False,
        detr_crop: float = 0.0,
        detr_crop_resize: Sequence[int] = (400, 500, 600),
        detr_crop_size: tuple[int, int] = (384, 600),
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, image_size, predict_root, seed)
        self.names = {
            "train": (train_annotations, train_images),
            "val": (val_annotations, val_images),
            "test": (None, None),  # annotations/instances_test*.json, scored by ``test`` when present
        }
        self.image_column = image_column
        self.objects_column = objects_column
        self.bbox_key = bbox_key
        self.category_key = category_key
        self.bbox_format = bbox_format
        self.train_split = train_split
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.given_class_names = list(class_names) if class_names else None
        self.with_masks = with_masks
        self.hflip = hflip
        self.crop_scale = crop_scale
        self.min_box_area = min_box_area
        self.drop_empty_boxes = drop_empty_boxes
        self.skip_corrupt = skip_corrupt
        self.detr_crop = detr_crop
        self.detr_crop_resize = list(detr_crop_resize)
        self.detr_crop_size = tuple(detr_crop_size)

    # ------------------------------------------------------------------ the data
    @cached_property
    def _coco_files(self) -> dict[str, tuple[Path, Path]] | None:
        """``{split: (json, image folder)}`` when ``root`` is a COCO-layout folder, else None."""
        root = self.data_root
        if root is None or not Path(root).is_dir() or _is_saved_dataset(Path(root)):
            return None
        found = {split: find_coco_split(Path(root), split, *names) for split, names in self.names.items()}
        found = {split: files for split, files in found.items() if files is not None}
        if not found:
            return None
        if "train" not in found:
            raise DataSourceError(f"{root}: no training annotations (annotations/instances_train*.json)")
        return found

    @cached_property
    def _coco_json(self) -> dict[str, dict]:
        return {split: read_coco_json(path) for split, (path, _) in self._coco_files.items()}

    @cached_property
    def _hf_source(self) -> datasets.DatasetDict:
        try:  # neither a COCO folder nor readable data with an objects column: say what the COCO layout is
            source = load_source(self.data_root, self.dataset)
            for name, ds in source.items():
                require_columns(ds, {"image_column": self.image_column, "objects_column": self.objects_column}, name)
        except DataSourceError as err:
            raise DataSourceError(f"{err} {COCO_ADVICE}") from err
        return source

    @cached_property
    def categories(self) -> Categories:
        """Category ids and names: from the COCO ``categories`` (the same in every split) or the ``objects``
        feature's ``ClassLabel``; no pass over the data is needed."""
        if self._coco_files is not None:
            found = {split: Categories.from_coco(data["categories"]) for split, data in self._coco_json.items()}
            if len(set(found.values())) > 1:
                raise DataSourceError(f"the splits list different categories: {found}")
            return next(iter(found.values()))
        features = next(iter(self._hf_source.values())).features
        names = objects_class_label(features, self.objects_column, self.category_key) or self.given_class_names
        if names is None:
            raise DataSourceError(
                f"the '{self.objects_column}' column's '{self.category_key}' has no ClassLabel feature: set "
                "data.class_names (category i is class_names[i])"
            )
        return Categories(tuple(range(len(names))), tuple(names))

    @property
    def class_names(self) -> list[str]:
        return list(self.categories.names)

    @property
    def num_classes(self) -> int:
        """Object categories, without the background (the task adds it)."""
        return len(self.categories.ids)

    @property
    def category_ids(self) -> list[int]:
        """The original category id of each label 1..K (``category_ids[label - 1]``)."""
        return list(self.categories.ids)

    @cached_property
    def _records(self) -> dict[str, list[ImageRecord]]:
        if self._coco_files is not None:
            records = {
                split: coco_records(self._coco_json[split], folder, f"{split} annotations {path.name}")
                for split, (path, folder) in self._coco_files.items()
            }
            if "val" not in records:  # a deterministic hold-out
                shuffled = records["train"][:]
                random.Random(self.seed).shuffle(shuffled)
                count = max(1, round(len(shuffled) * self.val_fraction))
                records.update(train=shuffled[count:], val=shuffled[:count])
        else:
            records = {split: self._objects_records(ds) for split, ds in self._hf_splits.items()}
        for split, recs in records.items():
            check_records(recs, self.categories, f"{split} annotations", self.drop_empty_boxes)
        return records

    @cached_property
    def _hf_splits(self) -> dict[str, datasets.Dataset]:
        train, val = train_val_splits(self._hf_source, self.train_split, self.val_split, self.val_fraction, self.seed)
        test_name = eval_split_names(self._hf_source, self.val_split).get("test")
        return {"train": train, "val": val, **({"test": self._hf_source[test_name]} if test_name else {})}

    def _objects_records(self, ds: datasets.Dataset) -> list[ImageRecord]:
        return objects_records(
            ds,
            objects_column=self.objects_column,
            bbox_key=self.bbox_key,
            category_key=self.category_key,
            bbox_format=self.bbox_format,
            category_names=self.class_names,
        )

    def _dataset(self, split: str, train: bool) -> DetectionDataset:
        images = None
        if self._coco_files is None:
            images = self._hf_splits[split].select_columns([self.image_column])
            images = images.cast_column(self.image_column, datasets.Image(decode=False))
        return DetectionDataset(
            self._records[split],
            self.categories,
            train=train,
            transform=self.train_transform() if train else None,
            with_masks=self.with_masks,
            images=images,
            image_column=self.image_column,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        if self.val_set is None:
            self.val_set = self._dataset("val", train=False)
            self.split_names = self._split_names()
        if self.test_set is None and stage in (None, "test") and "test" in self._records:
            self.test_set = self._dataset("test", train=False)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._dataset("train", train=True)

    def _split_names(self) -> dict[str, str]:
        """The data's names of the validation and test splits (a COCO json's suffix: ``val2017``)."""
        if self._coco_files is not None:
            return {role: path.stem.removeprefix("instances_") for role, (path, _) in self._coco_files.items()}
        return eval_split_names(self._hf_source, self.val_split)

    @property
    def image_ids(self) -> dict[str, int]:
        """``file_name -> image_id`` of the COCO images (for predictions on those files)."""
        if self._coco_files is None:
            return {}
        return {image["file_name"]: image["id"] for data in self._coco_json.values() for image in data["images"]}

    @property
    def image_normalization(self) -> Normalization:
        """Images stay in [0, 1]: the detector normalises them itself, with the same ``normalization``."""
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    # ------------------------------------------------------------- loaders and transforms
    def collate_fn(self) -> Callable:
        return collate_lists

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set(PredictImages, image_ids=self.image_ids), False, collate_lists)

    def train_transform(self) -> SeededTransform:
        """Optional random-resized crop to ``image_size`` or DETR's crop branch, horizontal flip; boxes, masks and ids
        follow."""
        steps: list[A.BasicTransform] = []
        if self.detr_crop > 0:
            steps.append(detr_crop_branch(self.detr_crop, self.detr_crop_resize, self.detr_crop_size))
        if self.crop_scale is not None:
            steps.append(A.RandomResizedCrop(size=(self.image_size, self.image_size), scale=tuple(self.crop_scale)))
        steps.append(A.HorizontalFlip(p=self.hflip))
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["indices"], min_area=self.min_box_area, clip=True)
        return SeededTransform(A.Compose(steps, bbox_params=bbox_params))

    def eval_transform(self) -> Callable:
        """Images for ``predict``: original size, 0..1 float CHW."""
        return A.Compose([A.ToFloat(max_value=255.0), ToTensorV2()])
