"""``predict`` as users run it, for the three tasks: one output per input (unique names), a well-formed CSV,
unreadable files skipped and listed (``data.skip_corrupt``) or named in one line, and a warning without weights."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focalbench.callbacks.detection import CocoResultsWriter
from focalbench.cli import main
from focalbench.data.images import ImageDecodeError

SMALL_SEG = ["--model.decode_channels", "16", "--model.aux_channels", "8", "--trainer.precision", "32"]
# 11 files, two pairs sharing a stem (``flower``, ``sub/leaf``), in several formats and sizes (height, width).
IMAGES = {
    "flower.tif": (40, 48),
    "flower.webp": (36, 52),
    "a.jpg": (32, 32),
    "b.png": (44, 40),
    "c.bmp": (30, 34),
    "d.jpeg": (33, 57),
    "e.tiff": (40, 40),
    "sub/leaf.png": (38, 46),
    "sub/leaf.jpg": (41, 35),
    "sub/deeper/f.png": (32, 48),
    "sub/deeper/g.webp": (45, 31),
}


def write_images(root: Path, names: dict[str, tuple[int, int]] = IMAGES) -> Path:
    rng = np.random.default_rng(0)
    for name, (h, w) in names.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


def write_corrupt(root: Path, names: dict[str, tuple[int, int]]) -> list[Path]:
    """``names`` readable images plus two unreadable ones (garbage bytes; a truncated PNG); returns the bad paths."""
    write_images(root, names)
    garbage = root / "broken.png"
    garbage.write_bytes(b"not an image at all")
    truncated = root / "sub" / "truncated.png"
    truncated.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    return sorted([garbage, truncated])


def class_folders(root: Path, classes: int, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(classes):
            (root / split / f"class{k}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / f"class{k}" / f"{i}.png")
    return root


def run(*args: str):
    return main(list(args))


def cls_predict(data: Path, predict_root: Path, out: Path, *extra: str, tiny_args: list[str]):
    return run(
        "predict", "--config", "cls_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
        "--data.predict_root", str(predict_root), "--trainer.default_root_dir", str(out), "--trainer.precision", "32",
        *tiny_args, *extra,
    )  # fmt: skip


def seg_predict(predict_root: Path, out: Path, *extra: str, tiny_args: list[str]):
    return run(
        "predict", "--config", "demo_seg.yaml", "--data.predict_root", str(predict_root),
        "--trainer.default_root_dir", str(out), *SMALL_SEG, *tiny_args, *extra,
    )  # fmt: skip


def skipped_lines(directory: Path) -> list[str]:
    return (directory / "skipped.txt").read_text().splitlines()


# ------------------------------------------------------------------ unique output names
def test_segmentation_writes_one_mask_per_image_keeping_path_and_extension(tmp_path, tiny_args):
    source = write_images(tmp_path / "new")
    cli = seg_predict(source, tmp_path / "runs", tiny_args=tiny_args)
    out = Path(cli.trainer.log_dir) / "predictions"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(f"{name}.png" for name in IMAGES)  # 11 in, 11 out: flower.tif.png, flower.webp.png
    for name, (h, w) in IMAGES.items():
        mask = Image.open(out / f"{name}.png")
        mask.load()
        assert mask.mode == "P" and mask.size == (w, h)


def test_detection_draws_one_image_per_input_keeping_path_and_extension(tmp_path, write_coco):
    write_coco(tmp_path / "coco", "train", 3, seed=0, suffix="2017")
    coco = tmp_path / "coco"
    names = {"flower.tif": (40, 48), "flower.webp": (36, 52), "sub/flower.png": (44, 40)}
    source = write_images(tmp_path / "new", names)
    cli = run(
        "predict", "--config", "det_coco.yaml", "--data.root", str(coco), "--data.predict_root", str(source),
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=focalbench.callbacks.detection.CocoResultsWriter",
        "--trainer.callbacks.draw_images=true", "--trainer.callbacks.score_threshold=0.0", *TINY_DET,
    )  # fmt: skip
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, CocoResultsWriter))
    images = writer.path.parent / "images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png")) == sorted(f"{n}.png" for n in names)
    for name, (h, w) in names.items():
        assert Image.open(images / f"{name}.png").size == (w, h)


# ------------------------------------------------------------------ the CSV
def test_csv_header_and_rows_have_the_same_columns_when_top_k_exceeds_the_classes(tmp_path, tiny_args):
    data = class_folders(tmp_path / "data", classes=4)
    cli = cls_predict(data, data / "val", tmp_path / "runs", "--model.top_k", "5", tiny_args=tiny_args)
    path = next(cb.path for cb in cli.trainer.callbacks if getattr(cb, "path", None))
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["path", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3", "label_4", "prob_4"]
    assert len(rows) == 1 + 8 and all(len(row) == 1 + 2 * 4 for row in rows)


# ------------------------------------------------------------------ unreadable files
def test_classification_skips_unreadable_files_and_lists_them(tmp_path, tiny_args, caplog):
    data = class_folders(tmp_path / "data", classes=3)
    good = {"a.png": (36, 36), "b.jpg": (40, 30), "sub/c.png": (32, 32)}
    bad = write_corrupt(tmp_path / "new", good)
    with caplog.at_level(logging.WARNING):
        cli = cls_predict(data, tmp_path / "new", tmp_path / "runs", "--data.skip_corrupt", "true", tiny_args=tiny_args)
    path = next(cb.path for cb in cli.trainer.callbacks if getattr(cb, "path", None))
    rows = list(csv.DictReader(open(path)))
    assert sorted(Path(row["path"]).relative_to(tmp_path / "new").as_posix() for row in rows) == sorted(good)
    assert skipped_lines(path.parent) == [str(p) for p in bad]
    for p in bad:
        assert str(p) in caplog.text


def test_segmentation_skips_unreadable_files_and_lists_them(tmp_path, tiny_args):
    good = {"a.png": (36, 36), "sub/b.jpg": (40, 30)}
    bad = write_corrupt(tmp_path / "new", good)
    cli = seg_predict(tmp_path / "new", tmp_path / "runs", "--data.skip_corrupt", "true", tiny_args=tiny_args)
    out = Path(cli.trainer.log_dir) / "predictions"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(f"{n}.png" for n in good)
    assert skipped_lines(out) == [str(p) for p in bad]


def test_detection_skips_unreadable_files_and_lists_them(tmp_path, write_coco):
    write_coco(tmp_path / "coco", "train", 3, seed=0, suffix="2017")
    coco = tmp_path / "coco"
    good = {"a.png": (40, 48), "sub/b.jpg": (36, 52)}
    bad = write_corrupt(tmp_path / "new", good)
    cli = run(
        "predict", "--config", "det_coco.yaml", "--data.root", str(coco), "--data.predict_root", str(tmp_path / "new"),
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.skip_corrupt", "true", *TINY_DET,
    )  # fmt: skip
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, CocoResultsWriter))
    assert {r["file_name"] for r in json.loads(writer.path.read_text())} <= set(good)
    predicted = sorted(Path(p).relative_to(tmp_path / "new").as_posix() for p in writer.predicted)
    assert predicted == sorted(good)  # every readable image was predicted
    assert skipped_lines(writer.path.parent) == [str(p) for p in bad]


@pytest.mark.parametrize("workers", [0, 1])
def test_without_skip_corrupt_an_unreadable_file_stops_with_one_line_naming_it(tmp_path, tiny_args, workers):
    data = class_folders(tmp_path / "data", classes=3)
    bad = write_corrupt(tmp_path / "new", {"a.png": (36, 36)})
    with pytest.raises(ImageDecodeError) as raised:
        cls_predict(data, tmp_path / "new", tmp_path / "runs", "--data.num_workers", str(workers), tiny_args=tiny_args)
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message  # not torch's re-raised worker traceback
    assert message.startswith(f"cannot read image {bad[0]}")


# ------------------------------------------------------------------ no weights
def test_predict_without_weights_warns_naming_both_options(tmp_path, tiny_args):
    data = class_folders(tmp_path / "data", classes=3)
    with pytest.warns(UserWarning, match=r"random weights.*--ckpt_path.*--model\.pretrained"):
        cls_predict(data, data / "val", tmp_path / "runs", tiny_args=tiny_args)


def test_predict_from_a_checkpoint_does_not_warn(tmp_path, tiny_args, recwarn):
    data = class_folders(tmp_path / "data", classes=3)
    fit = run(
        "fit", "--config", "cls_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "fit"), *tiny_args,
    )  # fmt: skip
    checkpoint = tmp_path / "weights.ckpt"
    fit.trainer.save_checkpoint(checkpoint)
    cls_predict(data, data / "val", tmp_path / "runs", "--ckpt_path", str(checkpoint), tiny_args=tiny_args)
    fit.datamodule.predict_root = str(data / "val")
    fit.trainer.predict(fit.model, datamodule=fit.datamodule)  # Python: the module just trained, no checkpoint
    assert (tmp_path / "fit" / "predictions" / "predictions.csv").is_file()  # no log dir (fast_dev_run): root dir
    assert not [w for w in recwarn if "random weights" in str(w.message)]


def test_dense_predict_with_a_pretrained_backbone_only_warns_that_the_heads_are_untrained(tmp_path, tiny_args):
    from focalbench.models import create_model, save_safetensors

    backbone = create_model("focalnet_tiny_lrf", num_classes=0, embed_dim=8, depths=(1, 1, 1, 1))
    weights = save_safetensors(backbone, tmp_path / "backbone.safetensors")
    source = write_images(tmp_path / "new", {"a.png": (32, 32)})
    with pytest.warns(UserWarning, match=r"untrained heads.*--ckpt_path"):
        seg_predict(source, tmp_path / "runs", "--model.pretrained", str(weights), tiny_args=tiny_args)


TINY_DET = [
    "--model.backbone_kwargs", "{embed_dim: 8, depths: [1, 1, 1, 1], focal_windows: 9}",
    "--model.min_size", "64", "--model.max_size", "64", "--model.detector_kwargs",
    "{rpn_pre_nms_top_n_test: 64, rpn_post_nms_top_n_test: 32, box_score_thresh: 0.0}",
    "--data.batch_size", "2", "--data.num_workers", "0",
    "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32",
]  # fmt: skip
