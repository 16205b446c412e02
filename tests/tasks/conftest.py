"""Fixtures for the task tests: tiny image folders written into tmp_path."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focalbench.cli import CONFIG_DIR, main

REPO = CONFIG_DIR.parent

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}

# A FocalNet of ~30k parameters: every CLI test overrides the config's backbone size with these, key by key, so
# the config's other backbone settings (focal_windows: 9 of the dense tasks) stay as users get them.
TINY = ["--model.backbone_kwargs.embed_dim", "8", "--model.backbone_kwargs.depths", "[1, 1, 1, 1]"]
FAST = ["--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0"]


def write_class_folders(root: Path, per_class: int, seed: int = 0, size: tuple[int, int] = (40, 48)) -> Path:
    """``root/<colour>/*.png``: noisy images tinted by class, learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(0, 60, (*size, 3))
            Image.fromarray(np.clip(noise + colour, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """An ImageNet-like layout: train/ and val/ class folders."""
    write_class_folders(tmp_path / "images" / "train", per_class=8, seed=0)
    write_class_folders(tmp_path / "images" / "val", per_class=4, seed=1)
    return tmp_path / "images"


@pytest.fixture
def tiny_args() -> list[str]:
    """CLI overrides: a tiny backbone, 32 px images, small batches, no worker processes."""
    return TINY + FAST


@pytest.fixture
def make_class_folders():
    """The folder writer, for tests that need their own counts."""
    return write_class_folders


def _validate(
    config: str, devices: int, log_dir: Path, extra: list[str], subcommand: str = "validate"
) -> dict[str, float]:
    """Run ``cli.py validate`` (or ``fit``) as users do (DDP re-launches the script per rank) and read the last
    logged validation metrics."""
    command = [
        sys.executable, str(REPO / "cli.py"), subcommand, "--config", config,
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
        "--trainer.strategy", "ddp" if devices > 1 else "auto", "--trainer.callbacks", "[]",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(log_dir),
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=log_dir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(open(next(log_dir.rglob("metrics.csv")))))
    last = [row for row in rows if any(k.startswith("val_") and v for k, v in row.items())][-1]
    return {k: float(v) for k, v in last.items() if k.startswith("val_") and v}


@pytest.fixture
def cli_validate():
    """``cli_validate(config, devices, log_dir, extra_args[, subcommand="fit"]) -> {metric: value}``: ``cli.py
    validate`` (or ``fit``) in a subprocess (DDP needs a script to re-launch), the last validation metrics read back
    from a CSVLogger."""
    return _validate


@pytest.fixture
def write_coco():
    """The COCO-folder writer of the data tests (``tests/data/test_detection.py``; tests are not a package):
    ``write_coco(root, split, count, seed=.., suffix="2017")``."""
    path = REPO / "tests" / "data" / "test_detection.py"
    spec = importlib.util.spec_from_file_location("detection_data_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_coco


@pytest.fixture
def demo_metric(tmp_path: Path):
    """``demo_metric(config, metric, *overrides)``: ``metric`` at the end of ``fit --config config *overrides`` on
    the embedded demo data, run under tmp_path without the image-writing callbacks (the demo-learning tests)."""

    def fit(config: str, metric: str, *overrides: str) -> float:
        args = ["--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.callbacks", "[]", *overrides]
        cli = main(["fit", "--config", config, *args])
        return float(cli.trainer.callback_metrics[metric])

    return fit
