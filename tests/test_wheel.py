"""``pip install .`` (not editable) into a fresh venv: the ``focalbench`` command works from any directory, with
the configs shipped in the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from focalbench import __version__
from focalbench.cli import CONFIG_DIR

REPO = CONFIG_DIR.parent


@pytest.mark.slow  # a fresh venv; a fit, an export and a timm load in new interpreters: 2.5-4 min on 2 loaded cores
def test_wheel_installs_a_focalbench_command_that_runs_outside_the_checkout(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (the README installs it: python3 -m pip install uv)")
    # the wheel, from a copy of the tracked files, so no build output lands in the checkout
    source = tmp_path / "source"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([uv, "build", "--wheel", "-q", "-o", str(tmp_path / "dist"), str(source)], check=True)
    (wheel,) = (tmp_path / "dist").glob("focalbench-*.whl")
    # a fresh venv of this interpreter; the dependencies come from uv's cache (hard links, no download when cached)
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", str(venv), "-p", sys.executable], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)], check=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = str(venv / "bin" / "focalbench")
    version = subprocess.run([command, "--version"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert version.stdout.strip() == f"focalbench {__version__}", version.stderr[-2000:]

    tiny = [
        "--model.backbone_kwargs.embed_dim", "8", "--model.backbone_kwargs.depths", "[1, 1, 1, 1]",
        "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
    ]  # fmt: skip
    fit = subprocess.run(
        [
            command, "fit", "--config", "demo_cls.yaml", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--trainer.callbacks", "[]",
            *tiny,
        ],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    # the config came from the installed package, and the run wrote where the user stands
    packaged = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert (packaged / "focalbench" / "configs" / "demo_cls.yaml").is_file()
    assert not (packaged / "focalbench" / "__editable__").exists()
    config = next((elsewhere / "runs" / "demo_cls").rglob("config.yaml")).read_text()
    assert "embed_dim: 8" in config
    (ckpt,) = [p for p in (elsewhere / "runs" / "demo_cls").rglob("*.ckpt") if p.name != "last.ckpt"]

    # the export subcommand from the installed package: the timm folder of the checkpoint just trained
    export = subprocess.run(
        [command, "export", "--config", "demo_cls.yaml", "--ckpt_path", str(ckpt), "--format", "timm",
         "--output", "timm_out", *tiny],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    assert json.loads((elsewhere / "timm_out" / "config.json").read_text())["architecture"] == "focalbench_focalnet"
    assert "its logits within" in (elsewhere / "timm_out" / "README.md").read_text()

    # in a fresh interpreter: timm alone does not know the demo size's architecture; after importing
    # focalbench.export it builds timm's own FocalNet
    probe = (
        "import timm\n"
        "try:\n    timm.create_model('local-dir:timm_out', pretrained=True)\n"
        "except RuntimeError as err:\n    print(err)\n"
        "import focalbench.export\n"
        "print(type(timm.create_model('local-dir:timm_out', pretrained=True)))\n"
    )
    loaded = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert loaded.stdout.splitlines() == [
        "Unknown model (focalbench_focalnet)",
        "<class 'timm.models.focalnet.FocalNet'>",
    ], loaded.stderr[-3000:]
