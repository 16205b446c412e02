"""The benchmark scripts run and print their comparison (smoke runs: tiny inputs, one timed iteration, no timing
asserted)."""

from __future__ import annotations

import json
import re
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
    assert "; malloc glibc default; " in run.stdout  # the allocator setting the figures were taken under
    results = json.loads(out.read_text())["results"]
    for result in results.values():
        assert result["fwd"] > 0 and result["train"] > 0
        assert {"fwd_faults", "train_faults"} <= result.keys()  # the page faults columns
        assert 0 < result["mem_mb"] < 4096  # the spawned first step's rise in resident memory


@pytest.mark.slow
def test_dw_grad_speed_checks_and_times_every_candidate():
    command = [
        sys.executable, "benchmarks/dw_grad_speed.py", "--shapes", "2x16x12x12", "--kernels", "3", "7",
        "--layouts", "channels_last", "contiguous", "--threads", "1", "--warmup", "0", "--repeats", "1",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("2x16x12x12")]
    assert len(rows) == 2 * 2 * 2  # precisions x layouts x kernels, each with a time and ratio per candidate
    assert all(len(re.findall(r"\d\.\dx", row)) == 6 for row in rows)  # default + 5 candidates
    assert "relative errors" not in run.stdout  # every candidate agreed with autograd's weight gradient


@pytest.mark.slow
def test_dense_speed_trains_against_timms_focalnet_at_window_9():
    command = [
        sys.executable, "benchmarks/dense_speed.py", "--backbones", "focalnet_tiny_srf", "timm:focalnet_tiny_srf",
        "--heads", "upernet", "--train", "--seg-size", "64", "--threads", "1", "--warmup", "0", "--repeats", "1",
        "--clock", "cpu",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "upernet-train: focalnet_tiny_srf runs at" in run.stdout
    assert "the speed of timm:focalnet_tiny_srf (load" in run.stdout


FAULT_COUNT = """
import sys, torch
sys.path.insert(0, "benchmarks")
from backbone_speed import minor_faults, retain_freed_memory
if sys.argv[1] == "retain":
    retain_freed_memory()
for _ in range(3):  # 64 MB, freed at once; three rounds let the heap reach its high-water mark
    torch.ones(2**24)
before = minor_faults()
for _ in range(3):  # again: 3 x 16384 fresh 4 KiB pages, unless the freed block is reused
    torch.ones(2**24)
print(minor_faults() - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_malloc_retain_reuses_freed_blocks_where_glibc_faults_them_in_again():
    def faults(setting: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", FAULT_COUNT, setting], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout.split()[-1])

    assert faults("default") > 45_000  # glibc mmaps a block over 32 MB afresh, page by page
    assert faults("retain") < 500


PEAK_FAULTS = """
import sys, torch
sys.path.insert(0, "benchmarks")
from backbone_speed import minor_faults, peak_convolutions
convolutions, _ = peak_convolutions("cpu", torch.float32)
with torch.no_grad():
    for _ in range(2):
        convolutions[-1]()
    before = minor_faults()
    for _ in range(5):
        convolutions[-1]()
print(len(convolutions), minor_faults() - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_matmul_peak_has_a_convolution_that_takes_no_fresh_pages_under_the_default_allocator():
    run = subprocess.run([sys.executable, "-c", PEAK_FAULTS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    count, faults = map(int, run.stdout.split()[-2:])
    assert count == 2  # plain and in place
    assert faults < 500  # the plain one took ~12,500 fresh pages a call (51 MB output)
