"""A trained tiny checkpoint per task (one short fit on the embedded demo data), shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from focalbench.cli import main

TINY = ["--model.backbone_kwargs.embed_dim", "8", "--model.backbone_kwargs.depths", "[1, 1, 1, 1]"]
LOADER = ["--data.batch_size", "4", "--data.num_workers", "0"]
# Per demo config: the tiny model and small inputs every export test of that task uses (fit and export alike).
ARGS = {
    "demo_cls.yaml": [*TINY, *LOADER, "--data.image_size", "32"],
    "demo_seg.yaml": [
        *TINY, *LOADER, "--data.image_size", "64", "--data.scale", "[64, 64]",
        "--model.decode_channels", "16", "--model.aux_channels", "8",
    ],
    "demo_det.yaml": [
        *TINY, *LOADER, "--model.min_size", "64", "--model.max_size", "64",
        "--model.detector_kwargs.fpn_channels", "16", "--model.detector_kwargs.box_head_dim", "32",
        "--model.detector_kwargs.mask_head_dim", "16",
        "--model.detector_kwargs.box_score_thresh", "0.0",  # detections to compare, even from an untrained head
    ],
    "demo_det_dino.yaml": [
        *TINY, *LOADER, "--model.hidden_dim", "32", "--model.decoder_layers", "2", "--model.ffn_dim", "32",
        "--model.num_points", "2", "--model.num_queries", "20", "--model.num_dn_queries", "6",
        "--model.num_select", "30",
    ],
}  # fmt: skip


def fit_checkpoint(config: str, root: Path) -> Path:
    """One training step and one validation batch: a real ModelCheckpoint file with a best score."""
    main([
        "fit", "--config", config, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "1", "--trainer.callbacks", "[]",
        "--trainer.default_root_dir", str(root),
        *ARGS[config],
    ])  # fmt: skip
    (best,) = [p for p in root.rglob("*.ckpt") if p.name != "last.ckpt"]
    return best


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, request) -> Path:
    """The checkpoint of the module's ``CONFIG``."""
    config = request.module.CONFIG
    return fit_checkpoint(config, tmp_path_factory.mktemp("fit"))


def _export(config: str, ckpt: Path, fmt: str, output: Path) -> Path:
    main(["export", "--config", config, "--ckpt_path", str(ckpt), "--format", fmt, "--output", str(output),
          *ARGS[config]])  # fmt: skip
    return output


@pytest.fixture
def run_export():
    """``run_export(config, ckpt, fmt, output)``: ``cli.py export`` in-process with the config's tiny overrides."""
    return _export
