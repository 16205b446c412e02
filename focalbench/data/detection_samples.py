"""Detection samples: COCO-style records read into ``{"image", "target", "file_name"}`` for torchvision's and DINO's
detectors, and a folder of images for ``predict``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset

from focalbench.data.base import ImageFolderForPredict
from focalbench.data.coco import Categories, ImageRecord, decode_mask
from focalbench.data.images import read_rgb


def collate_lists(batch: list[dict]) -> dict[str, list]:
    """A batch as a dict of lists (images differ in size; torchvision's detectors take lists)."""
    return {key: [sample[key] for sample in batch] for key in batch[0]}


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 to a 3xHxW float tensor in [0, 1] (the detector's transform normalises)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)


class DetectionDataset(Dataset):
    """Records as ``{"image", "target", "file_name"}``: a 0..1 float CHW image and a target dict with ``boxes``
    (N, 4) float xyxy, ``labels`` (N,) int64 in 1..K, ``masks`` (N, H, W) uint8, ``iscrowd``, ``area``,
    ``image_id``. ``train`` drops crowd regions (the detectors cannot use them); evaluation keeps them for the
    metric and keeps the original image size. ``transform``: an albumentations pipeline with ``BboxParams``
    (label field ``indices``), or None.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        categories: Categories,
        *,
        train: bool,
        transform: Callable | None = None,
        with_masks: bool = True,
        images: datasets.Dataset | None = None,
        image_column: str = "image",
    ) -> None:
        self.records = records
        self.categories = categories
        self.train = train
        self.transform = transform
        self.with_masks = with_masks
        self.images = images
        self.image_column = image_column

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, record: ImageRecord) -> np.ndarray:
        if self.images is None:
            return read_rgb(record.source)
        return read_rgb(self.images[record.source][self.image_column], record.source)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = self._image(record)
        height, width = image.shape[:2]
        anns = [a for a in record.annotations if not (self.train and a["iscrowd"])]
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        inside = np.clip(boxes, 0, [width, height, width, height])
        if not np.array_equal(inside, boxes):  # only when the annotations carry no image size (checked at set-up)
            warnings.warn(
                f"boxes of {record.file_name} reach outside its {width}x{height} pixels: clipped", stacklevel=2
            )
            boxes = inside
        keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
        masks = [decode_mask(anns[i], height, width) for i in keep] if self.with_masks else []
        if self.transform is not None:
            data = {"image": image, "bboxes": boxes[keep], "indices": keep}
            if masks:
                data["masks"] = np.stack(masks)
            out = self.transform(**data)
            image, boxes, kept = out["image"], out["bboxes"], np.asarray(out["indices"], int)
            # boxes that became degenerate (cropped away) were filtered with their index: take their masks too
            masks = [out["masks"][list(keep).index(i)] for i in kept] if masks else []
            keep = kept
        else:
            boxes = boxes[keep]
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.tensor([self.categories.label(anns[i]["category_id"]) for i in keep], dtype=torch.int64),
            "iscrowd": torch.tensor([anns[i]["iscrowd"] for i in keep], dtype=torch.int64),
            "area": torch.tensor([float(anns[i]["area"]) for i in keep], dtype=torch.float32),
            "image_id": record.image_id,
        }
        if self.with_masks:
            size = image.shape[:2]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, *size), dtype=torch.uint8)
        return {"image": to_tensor(image), "target": target, "file_name": record.file_name}


class PredictImages(ImageFolderForPredict):
    """A folder of images for ``predict``, each with the COCO ``image_id`` its file name has in the annotations
    (so results load against them), or a running number."""

    def __init__(
        self, root: str, transform: Callable, skip_corrupt: bool = False, image_ids: dict[str, int] | None = None
    ) -> None:
        super().__init__(root, transform, skip_corrupt)
        self.image_ids = image_ids or {}
        self.root = Path(root)

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        path = self.paths[index]
        relative = path.relative_to(self.root).as_posix()
        sample["file_name"] = relative
        sample["image_id"] = self.image_ids.get(relative, self.image_ids.get(path.name, index + 1))
        return sample
