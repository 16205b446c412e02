"""Fixtures for the task tests: tiny image folders written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}

# A FocalNet of ~30k parameters: every CLI test overrides the config's backbone size with these.
TINY = ["--model.backbone_kwargs", "{embed_dim: 8, depths: [1, 1, 1, 1]}"]
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
