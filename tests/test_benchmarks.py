"""The benchmark scripts run and print their comparison (smoke runs: tiny inputs, one timed iteration, no timing
asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_backbone_speed_prints_ratios_and_memory(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable, "benchmarks/backbone_speed.py", "--quick", "--image-size", "64", "--threads", "1",
        "--models", "focalnet_tiny_srf", "timm:focalnet_tiny_srf", "--grad-checkpointing", "--json", str(out),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "focalnet_tiny_srf vs timm:focalnet_tiny_srf: forward" in run.stdout
    results = json.loads(out.read_text())["results"]
    for result in results.values():
        assert result["fwd"] > 0 and result["train"] > 0
        assert 0 < result["mem_mb"] < 4096  # the spawned first step's rise in resident memory
