"""benchmarks/dense_speed.py's Mask2Former entry runs and prints its forward and training-step ratios (smoke run:
64 px, one timed iteration, no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mask2former_forward_and_train_step_ratios():
    command = [
        sys.executable, "benchmarks/dense_speed.py", "--backbones", "focalnet_tiny_lrf", "resnet18",
        "--heads", "mask2former", "--train", "--seg-size", "64", "--threads", "1",
        "--warmup", "0", "--repeats", "1",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "mask2former: focalnet_tiny_lrf runs at" in run.stdout
    assert "mask2former-train: focalnet_tiny_lrf runs at" in run.stdout
