"""Opening a data set from a hub id, a local folder, a CSV file or a ``save_to_disk`` directory.

Everything becomes a ``datasets.DatasetDict``; the data modules then only deal with columns and splits.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from focalbench.errors import FocalbenchError

SPLIT_ALIASES = {"train": ("train", "training"), "val": ("validation", "val", "valid", "test")}


class DataSourceError(FocalbenchError, ValueError):
    """A data set that cannot be opened or lacks what the task needs; the message says what and where."""


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_source(
    root: str | os.PathLike | None = None,
    dataset: str | None = None,
    *,
    config_name: str | None = None,
    revision: str | None = None,
    data_files: dict[str, str] | None = None,
    streaming: bool = False,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Open a data set: ``root`` (image folder, CSV file, or saved dataset) or ``dataset`` (hub id or builder name).

    With ``streaming`` the splits are ``IterableDataset``s read lazily (hub data sets larger than the disk).

    Offline, with no local copy of a hub data set, the error says which id was looked for and how to point the
    config at a local copy instead.
    """
    if root is not None:
        path = Path(root).expanduser()
        if not path.exists():
            raise DataSourceError(f"data.root '{root}' does not exist")
        if path.is_dir() and _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            loaded = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
            if streaming:
                return datasets.IterableDatasetDict(
                    {k: with_num_examples(v.to_iterable_dataset(), len(v)) for k, v in loaded.items()}
                )
            return loaded
        try:
            if path.is_file() and path.suffix == ".csv":
                return datasets.load_dataset("csv", data_files={"train": str(path)}, streaming=streaming)
            if path.is_dir() and streaming:
                return _stream_image_folder(path)
            if path.is_dir():
                return datasets.load_dataset("imagefolder", data_dir=str(path))
        except (FileNotFoundError, ValueError) as err:  # EmptyDatasetError (no data files) is a FileNotFoundError
            raise DataSourceError(f"data.root '{root}' cannot be read ({type(err).__name__}: {err})") from err
        raise DataSourceError(f"data.root '{root}': expected a folder, a .csv file or a saved dataset")
    if dataset is None:
        raise DataSourceError("no data: set data.root (a local folder) or data.dataset (a Hugging Face hub id).")
    try:
        return datasets.load_dataset(
            dataset, config_name, revision=revision, data_files=data_files, streaming=streaming
        )
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        raise DataSourceError(
            f"could not load the data set '{dataset}' ({type(err).__name__}: {str(err)[:300]}). If it cannot be "
            f"downloaded here, download it elsewhere and set data.root to the local copy (an image folder with "
            f"train/ and val/, a CSV file, or a folder written by Dataset.save_to_disk)."
        ) from err


def _stream_image_folder(path: Path) -> datasets.IterableDatasetDict:
    """An image folder read as a stream, each split's size set from its file list (one image a row) when no
    metadata file lists the rows instead."""
    builder = datasets.load_dataset_builder("imagefolder", data_dir=str(path))
    streams = builder.as_streaming_dataset()
    if not getattr(builder.config, "metadata_filenames", None):
        for split, files in builder.config.data_files.items():
            with_num_examples(streams[str(split)], len(files))
    return streams


def with_num_examples(stream: datasets.IterableDataset, count: int) -> datasets.IterableDataset:
    """Record a stream's row count in its split metadata, where the hub's data sets carry theirs."""
    name = str(stream.split)
    stream.info.splits = datasets.SplitDict({name: datasets.SplitInfo(name=name, num_examples=count)})
    return stream


def num_examples(ds: datasets.Dataset | datasets.IterableDataset) -> int | None:
    """Rows of a data set: its length, or for a stream its split's size from the metadata; None when unknown."""
    if not isinstance(ds, datasets.IterableDataset):
        return len(ds)
    splits = ds.info.splits
    info = splits.get(str(ds.split)) if splits is not None else None  # a saved data set's split is None: "None"
    return info.num_examples if info is not None and info.num_examples else None


def pick_split(splits: datasets.DatasetDict, name: str | None, role: str) -> str | None:
    """The split to use for ``role`` ("train"/"val"): ``name`` if given, else the first conventional alias."""
    if name is not None:
        if name not in splits:
            raise DataSourceError(f"split '{name}' for {role} not found; the data set has {list(splits)}")
        return name
    return next((alias for alias in SPLIT_ALIASES[role] if alias in splits), None)


def eval_split_names(splits: datasets.DatasetDict, val_split: str | None) -> dict[str, str]:
    """``{"val": .., "test": ..}``: the data's validation split (as :func:`pick_split` picks it; absent when it is
    held out of the training data) and its own test split (the first of ``test`` / ``testing`` that is not already
    the validation split), each only when the data has it."""
    val = pick_split(splits, val_split, "val")
    test = next((name for name in ("test", "testing") if name in splits and name != val), None)
    return {role: name for role, name in (("val", val), ("test", test)) if name}


def require_columns(ds: datasets.Dataset, columns: dict[str, str], where: str) -> None:
    """Fail with the list of present columns when a configured column is missing."""
    if ds.column_names is None:  # a stream whose schema is not known before reading
        return
    for key, column in columns.items():
        if column not in ds.column_names:
            raise DataSourceError(
                f"{where}: column '{column}' (data.{key}) not found; the columns present are {ds.column_names}"
            )


def train_val_splits(
    splits: datasets.DatasetDict,
    train_split: str | None,
    val_split: str | None,
    val_fraction: float,
    seed: int,
    stratify_column: str | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train and validation sets; a deterministic ``val_fraction`` hold-out when the data has no validation split."""
    train_name = pick_split(splits, train_split, "train") or next(iter(splits))
    val_name = pick_split(splits, val_split, "val")
    train = splits[train_name]
    if val_name is None or val_name == train_name:
        stratify = (
            stratify_column if stratify_column in train.features and _is_class_label(train, stratify_column) else None
        )
        try:
            parts = train.train_test_split(test_size=val_fraction, seed=seed, stratify_by_column=stratify)
        except ValueError as err:
            raise DataSourceError(
                f"the data has no validation split and holding out data.val_fraction={val_fraction} of its "
                f"{len(train)} training rows failed: {err}"
            ) from err
        train, val = parts["train"], parts["test"]
    else:
        val = splits[val_name]
    for name, ds in (("train", train), ("validation", val)):
        if len(ds) == 0:
            raise DataSourceError(f"the {name} split is empty")
    return train, val


def _is_class_label(ds: datasets.Dataset, column: str) -> bool:
    return isinstance(ds.features[column], datasets.ClassLabel)
