"""Semantic segmentation data: ADE20K (``ADEChallengeData2016/`` or a hub parquet copy), image + mask folders, a CSV
of image,mask paths, a saved dataset or a hub id; masks checked as they are read, mmseg's augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
from torch.utils.data import Dataset

from focalbench.data.base import IMAGE_SUFFIXES, BaseDataModule
from focalbench.data.images import describe_source, open_image, read_rgb
from focalbench.data.seg_transforms import (
    IGNORE_INDEX,
    segmentation_eval_transform,
    segmentation_train_transform,
)
from focalbench.data.sources import (
    SPLIT_ALIASES,
    DataSourceError,
    _is_saved_dataset,
    eval_split_names,
    load_source,
    require_columns,
    train_val_splits,
)

# The 150 classes of the SceneParsing benchmark (ADEChallengeData2016), in label order 1..150 (mmseg's names).
ADE20K_CLASSES: tuple[str, ...] = tuple(
    "wall,building,sky,floor,tree,ceiling,road,bed,windowpane,grass,cabinet,sidewalk,person,earth,door,table,"
    "mountain,plant,curtain,chair,car,water,painting,sofa,shelf,house,sea,mirror,rug,field,armchair,seat,fence,desk,"
    "rock,wardrobe,lamp,bathtub,railing,cushion,base,box,column,signboard,chest of drawers,counter,sand,sink,"
    "skyscraper,fireplace,refrigerator,grandstand,path,stairs,runway,case,pool table,pillow,screen door,stairway,"
    "river,bridge,bookcase,blind,coffee table,toilet,flower,book,hill,bench,countertop,stove,palm,kitchen island,"
    "computer,swivel chair,boat,bar,arcade machine,hovel,bus,towel,light,truck,tower,chandelier,awning,streetlight,"
    "booth,television receiver,airplane,dirt track,apparel,pole,land,bannister,escalator,ottoman,bottle,buffet,"
    "poster,stage,van,ship,fountain,conveyer belt,canopy,washer,plaything,swimming pool,stool,barrel,basket,"
    "waterfall,tent,bag,minibike,cradle,oven,ball,food,step,tank,trade name,microwave,pot,animal,bicycle,lake,"
    "dishwasher,screen,blanket,sculpture,hood,sconce,vase,traffic light,tray,ashcan,fan,pier,crt screen,plate,"
    "monitor,bulletin board,shower,radiator,glass,clock,flag".split(",")
)
ADE20K_DOWNLOAD = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
MASK_DIRS = ("masks", "annotations", "labels")  # beside images/: ours, ADE20K's, a common third


@dataclass(frozen=True)
class MaskFormat:
    """How stored masks become class maps: ``reduce_zero_label`` (0 → ignored, k → k-1, as mmseg for ADE20K),
    ``palette`` (RGB colour of class k at index k, for colour-coded masks), and the class count to check against."""

    num_classes: int
    reduce_zero_label: bool = False
    palette: tuple[tuple[int, int, int], ...] | None = None

    def read(self, value: Any, row: int | None = None) -> np.ndarray:
        """The stored class map: single-channel masks (L, P, I;16, I, 1) as stored; RGB via ``palette``."""
        image = open_image(value, row)
        if image.mode not in ("RGB", "RGBA", "LA"):
            return np.asarray(image).astype(np.int64)
        rgb = np.asarray(image.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0].astype(np.int64)  # a grey-level mask saved as RGB
        where = describe_source(value, row)
        if self.palette is None:
            raise DataSourceError(
                f"mask {where} is a colour (RGB) image: set data.palette to the RGB colour of each class (class k at "
                f"index k), or save the masks as single-channel PNGs of class indices"
            )
        codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        table = {(r << 16) | (g << 8) | b: k for k, (r, g, b) in enumerate(self.palette)}
        colours, inverse = np.unique(codes, return_inverse=True)
        unknown = [c for c in colours.tolist() if c not in table]
        if unknown:
            shown = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown[:5]]
            raise DataSourceError(f"mask {where}: colours {shown} are not in data.palette")
        return np.asarray([table[c] for c in colours.tolist()])[inverse].reshape(rgb.shape[:2])

    def __call__(self, value: Any, row: int | None, image_shape: Sequence[int], image_name: str) -> np.ndarray:
        """The checked uint8 class map (255 = ignore) for an image of ``image_shape``; errors name the mask file."""
        mask = self.read(value, row)
        where = describe_source(value, row)
        if mask.shape != tuple(image_shape):
            raise DataSourceError(
                f"mask {where} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_name} is "
                f"{image_shape[1]}x{image_shape[0]}"
            )
        if self.reduce_zero_label:  # mmseg: 0 ("other") → 255, k → k - 1, 255 stays 255
            mask = np.where((mask == 0) | (mask == IGNORE_INDEX), IGNORE_INDEX + 1, mask) - 1
        values = np.unique(mask)
        bad = values[((values < 0) | (values >= self.num_classes)) & (values != IGNORE_INDEX)]
        if len(bad):
            shift = " after reduce_zero_label (stored value - 1)" if self.reduce_zero_label else ""
            raise DataSourceError(
                f"mask {where}: values {bad[:10].tolist()}{shift} outside the {self.num_classes} classes "
                f"0..{self.num_classes - 1} (255 = ignore)"
            )
        return mask.astype(np.uint8)


class SegmentationDataset(Dataset):
    """Rows of a ``datasets.Dataset`` with undecoded ``image`` and ``mask`` cells, decoded by us (errors name the
    file), checked (:class:`MaskFormat`) and transformed jointly: ``{"image": 3xHxW float, "mask": HxW uint8}``."""

    def __init__(self, rows: datasets.Dataset, transform: Callable, mask_format: MaskFormat) -> None:
        self.rows = rows
        self.transform = transform
        self.mask_format = mask_format

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        image = read_rgb(row["image"], index)
        mask = self.mask_format(row["mask"], index, image.shape[:2], describe_source(row["image"], index))
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"]}


def collate_list(examples: list[dict]) -> dict[str, list]:
    """Evaluation batches: each key holds a list, so images of different sizes travel with their original masks."""
    return {key: [example[key] for example in examples] for key in examples[0]}


def _split_name(name: str) -> str | None:
    return next((role for role, aliases in SPLIT_ALIASES.items() if name.lower() in aliases), None)


def paired_folder(root: Path) -> Path | None:
    """The folder holding ``images/`` and a mask folder (``masks/``, ``annotations/``, ``labels/``): ``root`` or
    ``root/ADEChallengeData2016``; None if neither."""
    for folder in (root, root / "ADEChallengeData2016"):
        if (folder / "images").is_dir() and any((folder / name).is_dir() for name in MASK_DIRS):
            return folder
    return None


def _pairs(images: Path, masks: Path) -> dict[str, list[str]]:
    """Every image under ``images`` with the mask of the same relative stem under ``masks`` (any image suffix)."""
    by_stem = {p.relative_to(masks).with_suffix(""): p for p in masks.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    rows: dict[str, list[str]] = {"image": [], "mask": []}
    for path in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        mask = by_stem.get(path.relative_to(images).with_suffix(""))
        if mask is None:
            raise DataSourceError(f"image {path} has no mask: expected {masks / path.relative_to(images).stem}.png")
        rows["image"].append(str(path))
        rows["mask"].append(str(mask))
    return rows


def read_paired_folder(folder: Path) -> datasets.DatasetDict:
    """``images/{split}/`` + ``masks/{split}/`` (split folders named train/training, val/validation/…), or
    ``images/`` + ``masks/`` without splits (one ``train`` split, held out later)."""
    masks = next(folder / name for name in MASK_DIRS if (folder / name).is_dir())
    images = folder / "images"
    split_dirs = [d for d in sorted(images.iterdir()) if d.is_dir() and _split_name(d.name)]
    pairs = {d.name: _pairs(d, masks / d.name) for d in split_dirs} if split_dirs else {"train": _pairs(images, masks)}
    for name, rows in pairs.items():
        if not rows["image"]:
            raise DataSourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images / name}")
    return datasets.DatasetDict({name: datasets.Dataset.from_dict(rows) for name, rows in pairs.items()})


class SegmentationDataModule(BaseDataModule):
    """Semantic segmentation data: batches ``{"image", "mask"}`` with 255 = ignore (training: stacked crops;
    evaluation: lists of original-size images and masks, so the task scores predictions at the original size).

    ``data.root`` takes ``ADEChallengeData2016/`` (or the folder holding it), ``images/{train,val}`` +
    ``masks/{train,val}`` (``annotations/`` as ADE20K names it), ``images/`` + ``masks/`` without splits (a
    deterministic ``val_fraction`` hold-out), a CSV of image,mask paths, or a ``save_to_disk`` folder;
    ``data.dataset`` a hub id (columns ``image_column`` / ``mask_column``). Masks pair with images by relative stem.

    Class names: ``class_names``, else ``benchmark: ade20k`` (its 150 classes), else ``classes.txt`` (one name a line,
    class 0 first) in ``data.root`` or beside the CSV. Masks hold class indices (single-channel PNG, palette PNGs by
    index); colour masks are mapped through ``palette``. A mask whose size differs from its image's, or with values
    outside the classes (255 aside), stops the run naming the file (checked as each example is read).

    Args:
        benchmark: ``ade20k``: the SceneParsing classes with ``reduce_zero_label`` (label 0 "other" ignored,
            1..150 become 0..149), as mmseg and the paper evaluate.
        reduce_zero_label: treat stored 0 as ignore and shift the other labels down by one.
        palette: RGB colour per class, for colour-coded masks (and the colours of predicted masks).
        revision / data_files: passed to ``datasets.load_dataset`` for hub data (e.g. a parquet export branch).
        scale / ratio_range / cat_max_ratio / hflip / photometric: mmseg's training pipeline (rescale into the
            (long, short) box ``scale`` times U(ratio_range), crop ``image_size`` avoiding crops one class covers
            ``cat_max_ratio`` of, flip, photometric distortion, pad with 255 in the mask).
        skip_corrupt: ``predict`` leaves unreadable images out (named in the log and in ``skipped.txt``) instead of
            stopping at the first; training and evaluation data are not filtered (a bad file stops the run).
    """

    demo_subdir = "segmentation"

    def __init__(
        self,
        root: str | None = None,
        dataset: str | None = None,
        batch_size: int = 2,
        num_workers: int = 4,
        image_size: int = 512,
        predict_root: str | None = None,
        seed: int = 0,
        image_column: str = "image",
        mask_column: str = "mask",
        train_split: str | None = None,
        val_split: str | None = None,
        val_fraction: float = 0.1,
        class_names: Sequence[str] | None = None,
        benchmark: Literal["ade20k"] | None = None,
        reduce_zero_label: bool = False,
        palette: Sequence[tuple[int, int, int]] | None = None,
        revision: str | None = None,
        data_files: dict[str, str] | None = None,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip: float = 0.5,
        photometric: bool = True,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, image_size, predict_root, seed)
        self.image_column = image_column
        self.mask_column = mask_column
        self.train_split = train_split
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.given_class_names = list(class_names) if class_names else None
        self.benchmark = benchmark
        self.reduce_zero_label = reduce_zero_label or benchmark == "ade20k"
        self.palette = tuple(tuple(int(v) for v in colour) for colour in palette) if palette else None
        self.revision = revision
        self.data_files = data_files
        self.scale = scale
        self.ratio_range = ratio_range
        self.cat_max_ratio = cat_max_ratio
        self.hflip = hflip
        self.photometric = photometric
        self.skip_corrupt = skip_corrupt

    # ------------------------------------------------------------------ classes
    def _classes_file(self) -> Path | None:
        if self.data_root is None:
            return None
        root = Path(self.data_root).expanduser()
        folder = root if root.is_dir() else root.parent  # beside a CSV file
        paired = paired_folder(folder)
        candidates = [folder / "classes.txt"] + ([paired / "classes.txt"] if paired is not None else [])
        return next((path for path in candidates if path.is_file()), None)

    @cached_property
    def class_names(self) -> list[str]:
        """From ``class_names``, the benchmark, or ``classes.txt``; read without touching the images."""
        if self.given_class_names:
            return self.given_class_names
        if self.benchmark == "ade20k":
            return list(ADE20K_CLASSES)
        path = self._classes_file()
        if path is not None:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if names:
                return names
        raise DataSourceError(
            "the segmentation classes are not known: set data.class_names (a list, class 0 first), write classes.txt "
            "(one name a line) into data.root, or set data.benchmark: ade20k"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def mask_format(self) -> MaskFormat:
        if self.num_classes >= IGNORE_INDEX:
            raise DataSourceError(f"{self.num_classes} classes: masks are uint8 with 255 = ignore, so at most 255")
        return MaskFormat(self.num_classes, self.reduce_zero_label, self.palette)

    # ------------------------------------------------------------------ the data
    def _open_hub_or_file(self) -> datasets.DatasetDict:
        try:
            source = load_source(self.data_root, self.dataset, revision=self.revision, data_files=self.data_files)
        except DataSourceError as err:
            if self.data_root is not None:
                raise
            cause = err.__cause__ or err
            local = (
                f"download {ADE20K_DOWNLOAD}, unzip it and pass --data.root /path/to/ADEChallengeData2016 (or the "
                "folder holding it)"
                if self.benchmark == "ade20k"
                else "pass --data.root with a local copy (images/ + masks/ folders, a CSV of image,mask paths, or a "
                "folder written by Dataset.save_to_disk)"
            )
            raise DataSourceError(
                f"could not load the hub data set '{self.dataset}' ({type(cause).__name__}: {str(cause)[:200]}). "
                f"Either {local}; or let `datasets` reach the hub (network access, HF_HUB_OFFLINE/HF_DATASETS_OFFLINE "
                f"unset) or find it in its cache (download it once where the network is reachable)."
            ) from err
        columns = {"image_column": self.image_column, "mask_column": self.mask_column}
        out = {}
        for name, ds in source.items():
            require_columns(ds, columns, f"split '{name}'")
            ds = ds.select_columns([self.image_column, self.mask_column])
            ds = ds.rename_columns({c: k for k, c in zip(("image", "mask"), columns.values()) if c != k})
            for column in ("image", "mask"):  # decoded by us, so a bad file is named and masks keep their values
                if isinstance(ds.features[column], datasets.Image):
                    ds = ds.cast_column(column, datasets.Image(decode=False))
            out[name] = ds
        return datasets.DatasetDict(out)

    @cached_property
    def _source(self) -> datasets.DatasetDict:
        root = Path(self.data_root).expanduser() if self.data_root is not None else None
        if root is not None and root.is_dir() and not _is_saved_dataset(root):
            folder = paired_folder(root)
            if folder is None:
                raise DataSourceError(
                    f"data.root '{self.data_root}' holds no segmentation data: expected images/ beside masks/ (or "
                    f"annotations/), each with train/ and val/ or without splits, ADEChallengeData2016/, a CSV of "
                    f"image,mask paths or a folder written by Dataset.save_to_disk"
                )
            return read_paired_folder(folder)
        return self._open_hub_or_file()

    @cached_property
    def _splits(self) -> tuple[datasets.Dataset, datasets.Dataset]:
        return train_val_splits(self._source, self.train_split, self.val_split, self.val_fraction, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or stage == "predict":
            return
        train, val = self._splits
        self.train_set = SegmentationDataset(train, self.train_transform(), self.mask_format)
        self.val_set = SegmentationDataset(val, self.eval_transform(), self.mask_format)
        self.split_names = eval_split_names(self._source, self.val_split)
        test_name = self.split_names.get("test")
        if test_name is not None:
            self.test_set = SegmentationDataset(self._source[test_name], self.eval_transform(), self.mask_format)

    # ---------------------------------------------------------------- loaders
    def eval_collate_fn(self) -> Callable:
        return collate_list  # original-size images and masks travel as lists

    # ------------------------------------------------------------- transforms
    def train_transform(self) -> Callable:
        return segmentation_train_transform(
            self.image_size,
            scale=self.scale,
            ratio_range=self.ratio_range,
            cat_max_ratio=self.cat_max_ratio,
            hflip=self.hflip,
            photometric=self.photometric,
            mean=self.normalization[0],
            std=self.normalization[1],
        )

    def eval_transform(self) -> Callable:
        return segmentation_eval_transform(*self.normalization)
