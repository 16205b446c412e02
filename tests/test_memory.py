"""Freed memory kept for reuse (focalbench.memory, and the RetainFreedMemory callback the CLI adds to every run),
checked by the page faults a freed block costs again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from focalbench.callbacks.memory import RetainFreedMemory
from focalbench.cli import main

ROOT = Path(__file__).resolve().parents[1]

# A "step" holds blocks of 64, 48 and 40 MB (over glibc's 32 MB mmap limit) together, then frees them; after ten
# steps, three more, whose minor faults the script prints with what the setting reported (``applied``): glibc's
# default maps each block afresh and faults its 4 KiB pages in (38912 a step), retained memory is reused. The
# ten steps let the heap reach its steady state: after three, glibc (2.36) still extended it for a block in some runs.
COUNT = """
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    blocks = [torch.ones(n * 2**18) for n in (64, 48, 40)]
for _ in range(10):
    step()
before = faults()
for _ in range(3):
    step()
print(applied, faults() - before)
"""
FAULT_COUNT = (
    """
import resource, sys, torch
from focalbench.memory import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else None
"""
    + COUNT
)


def fault_counts(script: str, *settings: str) -> list[tuple[str, int]]:
    """(what the setting reported, faults) of ``script`` run once per setting, the processes side by side (most of
    each is importing torch or Lightning, single-threaded; the counts are per process)."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, setting], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for setting in settings
    ]
    results = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr.decode()
        reported, faults = stdout.decode().split()[-2:]
        results.append((reported, int(faults)))
    return results


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_retained_memory_is_reused_where_glibc_faults_it_in_again():
    default, (reported, faults) = fault_counts(FAULT_COUNT, "default", "retain")
    assert default == ("None", pytest.approx(3 * 38_912, rel=0.1))
    assert reported == "True"
    assert faults < 500


# A one-step CPU fit with the callback (argv[1]: enabled), then COUNT in the same process.
FIT_THEN_COUNT = (
    """
import resource, sys, torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from focalbench.callbacks.memory import RetainFreedMemory
callback = RetainFreedMemory(enabled=sys.argv[1] == "on")
Trainer(
    accelerator="cpu", max_steps=1, limit_val_batches=0, callbacks=[callback], logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
).fit(BoringModel())
applied = callback.applied
"""
    + COUNT
)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_a_cpu_fit_reuses_freed_blocks_unless_turned_off():
    (reported, faults), (reported_off, faults_off) = fault_counts(FIT_THEN_COUNT, "on", "off")
    assert reported == "True" and faults < 500
    assert reported_off == "False" and faults_off == pytest.approx(3 * 38_912, rel=0.1)  # glibc's default


def test_the_cli_adds_it_once_and_a_configured_one_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [
        "fit", "--config", "demo_cls.yaml", "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
        "--model.backbone_kwargs.embed_dim", "8", "--model.backbone_kwargs.depths", "[1, 1, 1, 1]",
        "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
    ]  # fmt: skip

    def retainers(*overrides: str) -> list[RetainFreedMemory]:
        return [cb for cb in main([*common, *overrides]).trainer.callbacks if isinstance(cb, RetainFreedMemory)]

    added = retainers("--trainer.default_root_dir", "a")
    assert len(added) == 1 and added[0].enabled
    assert added[0].applied == (sys.platform == "linux")
    off = ["--trainer.callbacks+=focalbench.callbacks.memory.RetainFreedMemory", "--trainer.callbacks.enabled=false"]
    configured = retainers(*off, "--trainer.default_root_dir", "b")
    assert len(configured) == 1 and not configured[0].enabled and not configured[0].applied
