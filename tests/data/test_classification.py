"""The classification data module on every source users have, and on bad input."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from focalbench.data.classification import ClassificationDataModule
from focalbench.data.images import ImageDecodeError
from focalbench.data.sources import DataSourceError


def _image(path: Path, mode: str = "RGB", size=(20, 24), value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size, value * 200, dtype=np.uint16)).save(path)
    else:
        Image.new(mode, size[::-1], value if mode in ("L", "I") else (value,) * len(mode)).save(path)
    return path


def _folder(root: Path, per_class: int = 4) -> Path:
    for name in ("cat", "dog"):
        for i in range(per_class):
            _image(root / name / f"{i}.png", value=40 + 100 * (name == "dog"))
    return root


def _module(**kwargs) -> ClassificationDataModule:
    kwargs = {"image_size": 16, "batch_size": 2, "num_workers": 0, **kwargs}
    return ClassificationDataModule(**kwargs)


def test_image_folder_without_val_split_holds_out_a_deterministic_fraction(tmp_path):
    first = _module(root=str(_folder(tmp_path / "data", per_class=10)), val_fraction=0.2)
    first.setup("fit")
    second = _module(root=str(tmp_path / "data"), val_fraction=0.2)
    second.setup("fit")
    assert first.class_names == ["cat", "dog"] and first.num_classes == 2
    assert len(first.val_set) == 4 and len(first.train_set) == 16
    assert first.val_set["label"] == second.val_set["label"]  # same seed, same hold-out
    batch = next(iter(first.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.float32


def test_csv_with_class_names_and_saved_dataset(tmp_path):
    rows = ["image,label"]
    for i in range(6):
        rows.append(f"{_image(tmp_path / f'{i}.png')},{'dog' if i % 2 else 'cat'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    module = _module(root=str(tmp_path / "labels.csv"), val_fraction=0.5)
    module.setup("fit")
    assert module.class_names == ["cat", "dog"]
    assert set(module.train_set["label"]) <= {0, 1}

    saved = datasets.Dataset.from_dict(
        {"img": [str(tmp_path / f"{i}.png") for i in range(6)], "y": [0, 1, 2, 0, 1, 2]}
    ).cast_column("img", datasets.Image())
    datasets.DatasetDict(train=saved, validation=saved).save_to_disk(str(tmp_path / "saved"))
    module = _module(root=str(tmp_path / "saved"), image_column="img", label_column="y", class_names=["a", "b", "c"])
    module.setup("fit")
    assert module.num_classes == 3 and len(module.val_set) == 6
    assert module.val_set[0]["image"].shape == (3, 16, 16)


def test_grayscale_rgba_and_16_bit_images_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "I;16"):
        _image(tmp_path / "data" / "a" / f"{mode.replace(';', '')}.png", mode=mode)
        _image(tmp_path / "data" / "b" / f"{mode.replace(';', '')}.png", mode=mode)
    module = _module(root=str(tmp_path / "data"), val_fraction=0.5)
    module.setup("fit")
    for sample in module.train_set:
        assert sample["image"].shape == (3, 16, 16)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    module = _module(root=str(root), val_fraction=0.5, augment=False)
    module.setup("fit")
    with pytest.raises(ImageDecodeError, match="broken.png"):
        [module.train_set[i] for i in range(len(module.train_set))] + [
            module.val_set[i] for i in range(len(module.val_set))
        ]
    skipping = _module(root=str(root), val_fraction=0.5, skip_corrupt=True)
    skipping.setup("fit")
    assert skipping.skipped_images == 1
    assert len(skipping.train_set) + len(skipping.val_set) == 8


def test_label_out_of_range_and_unknown_class_name_name_the_row(tmp_path):
    image = _image(tmp_path / "x.png")
    (tmp_path / "ids.csv").write_text(f"image,label\n{image},0\n{image},1\n{image},7\n{image},0\n")
    module = _module(root=str(tmp_path / "ids.csv"), class_names=["a", "b"], val_split="train")
    with pytest.raises(DataSourceError, match=r"train row 2: label 7 out of range for 2 classes"):
        module.setup("fit")
    (tmp_path / "names.csv").write_text(f"image,label\n{image},a\n{image},zebra\n")
    module = _module(root=str(tmp_path / "names.csv"), class_names=["a", "b"], val_split="train")
    with pytest.raises(DataSourceError, match=r"train row 1: unknown class name 'zebra'"):
        module.setup("fit")


def test_missing_column_lists_present_columns(tmp_path):
    module = _module(root=str(_folder(tmp_path / "data")), label_column="category")
    with pytest.raises(
        DataSourceError, match=r"column 'category' \(data.label_column\) not found.*\['image', 'label'\]"
    ):
        module.setup("fit")


def test_empty_split_and_missing_root_are_errors(tmp_path, monkeypatch):
    image = str(_image(tmp_path / "x.png"))
    train = datasets.Dataset.from_dict({"image": [image, image], "label": [0, 1]})
    empty = datasets.Dataset.from_dict({"image": [], "label": []}, features=train.features)
    # (datasets itself cannot reload an empty saved split, so the source is handed over in memory)
    monkeypatch.setattr(
        "focalbench.data.classification.load_source",
        lambda *a, **k: datasets.DatasetDict(train=train, validation=empty),
    )
    with pytest.raises(DataSourceError, match="the validation split is empty"):
        _module(root=str(tmp_path)).setup("fit")
    monkeypatch.undo()
    (tmp_path / "one.csv").write_text(f"image,label\n{image},0\n")
    with pytest.raises(DataSourceError, match="holding out data.val_fraction"):
        _module(root=str(tmp_path / "one.csv"), val_fraction=0.1).setup("fit")
    with pytest.raises(DataSourceError, match="does not exist"):
        _module(root=str(tmp_path / "nowhere")).setup("fit")


def test_offline_hub_dataset_says_how_to_use_a_local_copy():
    with pytest.raises(DataSourceError, match=r"'no-such-user/no-such-dataset'.*set data.root"):
        _module(dataset="no-such-user/no-such-dataset").setup("fit")


def test_streaming_shards_by_rank_and_checks_labels_as_it_reads(tmp_path):
    root = tmp_path / "data"
    _folder(root / "train", per_class=6)
    _folder(root / "val", per_class=3)
    module = _module(root=str(root), streaming=True, augment=False)
    module.setup("fit")
    assert module.class_names == ["cat", "dog"]
    assert isinstance(module.train_set, datasets.IterableDataset)

    def labels_seen(rank: int) -> list[str]:
        module._replicas = lambda: (2, rank)  # what a 2-process DDP trainer reports
        return [p for batch in module.val_dataloader() for p in batch["label"].tolist()]

    seen = [labels_seen(0), labels_seen(1)]
    assert len(seen[0]) + len(seen[1]) == 6  # every validation image once, split between the ranks
    module._replicas = lambda: (1, 0)
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16)

    bad = tmp_path / "bad.csv"
    image = _image(tmp_path / "x.png")
    bad.write_text(f"image,label\n{image},0\n{image},9\n")
    streamed = _module(root=str(bad), streaming=True, class_names=["a", "b"], train_split="train", val_split="train")
    with pytest.raises(DataSourceError, match="separate train and validation splits"):
        streamed.setup("fit")
