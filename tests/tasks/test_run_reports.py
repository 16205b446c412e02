"""What a run reports and keeps: the user's own callbacks honoured, the test split scored, the base lr as one
TensorBoard curve, hyperparameters with the monitored metric (no ``hp_metric = -1``), a validation picture spread
over the classes, and the summary printed at the end of fit / validate / test / predict."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from focalbench.callbacks.classification import ClassificationImages
from focalbench.cli import CONFIG_DIR, main

TINY = ["--model.backbone_kwargs.embed_dim", "8", "--model.backbone_kwargs.depths", "[1, 1, 1, 1]"]
FAST = ["--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.precision", "32"]
LR, WARMUP, EPOCHS, STEPS_PER_EPOCH = 2e-3, 3, 2, 6  # 24 training images in batches of 4


def class_folders(root: Path, splits: dict[str, int], classes: int = 3) -> Path:
    """``root/<split>/class<k>/*.png``, ``splits[split]`` images per class (sorted by class, as folders are)."""
    rng = np.random.default_rng(0)
    for split, per_class in splits.items():
        for k in range(classes):
            (root / split / f"class{k}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = np.clip(rng.integers(0, 60, (36, 36, 3)) + 60 * k, 0, 255).astype(np.uint8)
                Image.fromarray(image).save(root / split / f"class{k}" / f"{i}.png")
    return root


def run(*args: str):
    return main(list(args))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One short fit on a class-sorted validation split (12 images, batches of 4: the first batch is one class),
    with layer decay (several parameter groups) and a 3-step warm-up; its printed summary."""
    tmp = tmp_path_factory.mktemp("fit")
    data = class_folders(tmp / "data", {"train": 8, "val": 4})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli = run(
            "fit", "--config", "cls_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
            "--trainer.max_epochs", str(EPOCHS), "--trainer.log_every_n_steps", "1", "--model.layer_decay", "0.9",
            "--model.warmup_steps", str(WARMUP), "--model.optimizer.init_args.lr", str(LR),
            "--trainer.default_root_dir", str(tmp / "runs"), *TINY, *FAST,
        )  # fmt: skip
    events = next((tmp / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return cli, accumulator, out.getvalue(), data


def test_the_base_lr_is_one_curve_following_the_schedule(fitted):
    cli, accumulator, _, _ = fitted
    assert len(cli.trainer.optimizers[0].param_groups) > 2  # layer decay: one group per depth
    scalars = set(accumulator.Tags()["scalars"])
    assert "lr" in scalars and not [tag for tag in scalars if tag.startswith("lr-")]
    logged = {event.step: event.value for event in accumulator.Scalars("lr")}
    total = EPOCHS * STEPS_PER_EPOCH
    for step in (WARMUP, WARMUP + 2, total - 1):  # after warm-up: lr × cosine factor, by hand
        factor = 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (total - WARMUP)))
        assert logged[step] == pytest.approx(LR * factor, rel=1e-5), step
    assert logged[0] == pytest.approx(LR * 1e-3, rel=1e-5)  # warm-up starts at 1e-3 of the lr


def test_hyperparameters_go_with_the_monitored_metric_not_a_placeholder(fitted):
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, accumulator, _, _ = fitted
    assert "hp_metric" not in accumulator.Tags()["scalars"]
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == ["val_acc1"]
    assert {info.name for info in experiment.hparam_infos} >= {"layer_decay", "warmup_steps", "backbone"}


def test_validation_picture_shows_a_fixed_sample_spread_over_the_classes(fitted):
    cli, accumulator, _, _ = fitted
    pictures = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ClassificationImages))
    assert len(set(pictures.shown_labels)) == 3  # the first batch alone holds one class
    assert len(accumulator.Images("val/predictions")) == EPOCHS


def test_fit_ends_with_a_summary_naming_the_best_checkpoint_logs_and_predict_command(fitted):
    cli, _, printed, _ = fitted
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.is_file() and best.name.startswith("epoch")
    score = float(cli.trainer.checkpoint_callback.best_model_score)
    assert f"{best} (val_acc1 = {score:.4f})" in printed
    log_dir = Path(cli.trainer.log_dir)
    assert f"tensorboard --logdir {log_dir.parent}" in printed
    config = log_dir / "config.yaml"
    assert config.is_file()
    assert f"python cli.py predict --config {config} --ckpt_path {best} --data.predict_root DIR" in printed


def test_predict_summary_names_the_outputs_and_their_count(fitted, tmp_path, capsys):
    cli, _, _, data = fitted
    best = cli.trainer.checkpoint_callback.best_model_path
    run(
        "predict", "--config", "cls_custom.yaml", "--data.root", str(data), "--data.predict_root", str(data / "val"),
        "--ckpt_path", best, "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY, *FAST,
    )  # fmt: skip
    printed = capsys.readouterr().out
    written = next((tmp_path / "runs").rglob("predictions.csv"))
    assert f"12 images -> {written}" in printed


def test_a_configured_model_checkpoint_is_the_one_that_runs(tmp_path):
    data = class_folders(tmp_path / "data", {"train": 4, "val": 2})
    cli = run(
        "fit", "--config", "cls_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.filename=mine",
        "--trainer.callbacks.monitor=val_loss", "--trainer.callbacks.mode=min", *TINY, *FAST,
    )  # fmt: skip
    names = {p.name for p in (tmp_path / "runs").rglob("*.ckpt")}
    assert names == {"mine.ckpt"}
    assert cli.trainer.checkpoint_callback.monitor == "val_loss"


def test_checkpointing_turned_off_writes_no_checkpoint(tmp_path):
    data = class_folders(tmp_path / "data", {"train": 4, "val": 2})
    cli = run(
        "fit", "--config", "cls_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.enable_checkpointing", "false", *TINY, *FAST,
    )  # fmt: skip
    assert cli.trainer.checkpoint_callback is None and not list((tmp_path / "runs").rglob("*.ckpt"))


def test_test_scores_the_data_test_split(tmp_path, caplog, capsys):
    data = class_folders(tmp_path / "data", {"train": 4, "val": 2, "test": 3})
    cli = run(
        "test", "--config", "cls_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY, *FAST,
    )  # fmt: skip
    assert len(cli.trainer.test_dataloaders.dataset) == 9  # test/: 3 per class, not val/ (2 per class)
    assert "scoring the 'test' split (9 samples)" in caplog.text
    printed = capsys.readouterr().out
    score = float(cli.trainer.callback_metrics["test_acc1"])
    assert "test finished" in printed and f"test_acc1         {score:.4f}" in printed  # the summary, monitored first
    assert f"TensorBoard logs  {cli.trainer.log_dir}" in printed


def seg_folders(root: Path, splits: dict[str, int]) -> Path:
    """``images/<split>/*.png`` + ``masks/<split>/*.png`` (two classes) and ``classes.txt``."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        for folder in ("images", "masks"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            mask = np.zeros((32, 40), np.uint8)
            mask[:, : 10 + 4 * i] = 1
            image = rng.integers(0, 60, (32, 40, 3)) + 120 * mask[..., None]
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("background\nthing\n")
    return root


@pytest.mark.parametrize("splits", [{"train": 2, "val": 2, "test": 3}, {"train": 2, "val": 2}])
def test_segmentation_test_scores_the_test_split_or_says_it_uses_validation(tmp_path, caplog, splits):
    data = seg_folders(tmp_path / "data", splits)
    cli = run(
        "test", "--config", "seg_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
        "--model.test_scale", "null", "--model.decode_channels", "16", "--model.aux_channels", "8",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY, *FAST,
    )  # fmt: skip
    scored = len(cli.trainer.test_dataloaders.dataset)
    if "test" in splits:
        assert scored == 3 and "test: scoring the 'test' split (3 samples)" in caplog.text
    else:
        assert scored == 2 and "no test split: scoring the validation split 'val' (2 samples)" in caplog.text


def test_test_without_a_test_split_says_it_scores_the_validation_split(tmp_path, caplog):
    data = class_folders(tmp_path / "data", {"train": 4, "val": 2})
    cli = run(
        "test", "--config", "cls_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY, *FAST,
    )  # fmt: skip
    assert len(cli.trainer.test_dataloaders.dataset) == 6
    assert "the data has no test split: scoring the validation split 'validation' (6 samples)" in caplog.text


@pytest.mark.slow
def test_two_process_fit_and_predict_report_once_and_write_every_output(tmp_path):
    """DDP: the summaries read trainer.log_dir (a broadcast) on every rank and print once; predict writes a CSV per
    rank covering every readable image, and one skipped.txt."""
    data = class_folders(tmp_path / "data", {"train": 4, "val": 2})
    new = tmp_path / "new"
    for i in range(5):
        (new / f"{i}.png").parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((36, 36, 3), 40 * i, np.uint8)).save(new / f"{i}.png")
    (new / "broken.png").write_bytes(b"not an image")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = [
        "--config", "cls_custom.yaml", "--data.root", str(data), "--model.pretrained", "null",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY, *FAST,
    ]  # fmt: skip

    def cli(*args: str) -> str:
        command = [sys.executable, str(CONFIG_DIR.parent / "cli.py"), *args]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    printed = cli("fit", *common, "--trainer.max_epochs", "1")
    assert printed.count("fit finished") == 1
    best = re.search(r"best checkpoint +(\S+\.ckpt)", printed).group(1)
    assert Path(best).is_file()
    skip = ["--data.skip_corrupt", "true"]
    printed = cli("predict", *common, "--ckpt_path", best, "--data.predict_root", str(new), *skip)
    assert printed.count("predict finished") == 1
    out = next((tmp_path / "runs").rglob("predictions.rank0.csv")).parent
    rows = [row for rank in (0, 1) for row in csv.DictReader(open(out / f"predictions.rank{rank}.csv"))]
    assert sorted(Path(row["path"]).name for row in rows) == [f"{i}.png" for i in range(5)]
    assert (out / "skipped.txt").read_text().splitlines() == [str(new / "broken.png")]


def test_tasks_import_no_callbacks_and_the_cli_adds_the_defaults():
    # Tasks declare what the defaults need (monitor, checkpoint file name, writer class path); the CLI builds them.
    import ast
    from pathlib import Path

    import focalbench.tasks

    for path in Path(focalbench.tasks.__file__).parent.glob("*.py"):
        imported = [
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        ]
        assert not [m for m in imported if m.startswith("focalbench.callbacks")], path.name
