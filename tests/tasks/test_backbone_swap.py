"""FocalNet vs any timm backbone on every config is one flag: ``--model.backbone NAME``.

The configs carry FocalNet architecture keys (``embed_dim``, ``depths``, ``focal_windows`` …); they must not
reach another backbone. Every config in ``configs/`` runs ``fast_dev_run`` with ``resnet18`` and its own
``backbone_kwargs`` (``--model.pretrained null`` only because the paper configs name hub weights, offline here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from focalbench.cli import CONFIG_DIR, main

HERE = Path(__file__).resolve().parent


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMMON = ["--data.batch_size", "2", "--data.num_workers", "0", "--trainer.precision", "32"]
COMMON += ["--model.pretrained", "null"]
DETECTION = [
    "--model.min_size", "64", "--model.max_size", "64", "--model.detector_kwargs",
    "{rpn_pre_nms_top_n_train: 64, rpn_post_nms_top_n_train: 32, rpn_pre_nms_top_n_test: 64,"
    " rpn_post_nms_top_n_test: 32, box_batch_size_per_image: 32}",
]  # fmt: skip
SEGMENTATION = ["--model.decode_channels", "16", "--model.aux_channels", "8", "--data.image_size", "64"]
CLASSIFICATION = ["--data.image_size", "32"]


M2F = [
    "--model.hidden_dim", "32", "--model.num_queries", "6", "--model.decoder_layers", "2",
    "--model.encoder_layers", "1", "--model.num_attention_heads", "2", "--model.dim_feedforward", "32",
    "--model.encoder_feedforward_dim", "32", "--model.train_num_points", "64", "--data.image_size", "64",
]  # fmt: skip
DINO = [
    "--model.hidden_dim", "32", "--model.encoder_layers", "1", "--model.decoder_layers", "2",
    "--model.num_heads", "4", "--model.ffn_dim", "64", "--model.num_points", "2", "--model.num_queries", "30",
    "--model.num_dn_queries", "10", "--model.min_size", "[48, 64]", "--model.max_size", "64",
    "--model.num_select", "50",
]  # fmt: skip
HEADS = {
    "ClassificationTask": CLASSIFICATION,
    "SegmentationTask": SEGMENTATION,
    "DetectionTask": DETECTION,
    "Mask2FormerTask": M2F,
    "DINOTask": DINO,
}


def config_of(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / name).read_text())


@pytest.fixture
def data_args(tmp_path: Path, image_folder: Path):
    """Extra arguments per config: its task's small heads, and test data in the layout the config reads (the demo
    data where the config uses it)."""

    def args(config: str) -> list[str]:
        cfg = config_of(config)
        task = cfg["model"]["class_path"].rsplit(".", 1)[1]
        data = cfg["data"]["init_args"]
        heads = HEADS[task]
        if data.get("root") == "demo":
            return heads
        if task == "ClassificationTask":
            return ["--data.root", str(image_folder), "--data.dataset", "null", *heads]
        if task in ("DetectionTask", "DINOTask") or cfg["model"]["init_args"].get("mode") == "instance":
            coco = _load(HERE.parent / "data" / "test_detection.py", "detection_data_helpers")
            coco.write_coco(tmp_path / "coco", "train", 4, seed=0, suffix="2017")
            coco.write_coco(tmp_path / "coco", "val", 3, seed=1, suffix="2017")
            return ["--data.root", str(tmp_path / "coco"), *heads]
        if cfg["model"]["init_args"].get("mode") == "panoptic":
            panoptic = _load(HERE / "test_mask2former.py", "mask2former_tests")
            root = panoptic.write_panoptic(tmp_path / "panoptic")
            return ["--data.root", str(root), "--data.dataset", "null", "--model.test_scale", "null", *heads]
        ade = _load(HERE / "test_segmentation.py", "segmentation_tests")
        sizes = {"training": [(40, 48)] * 4, "validation": [(40, 48), (36, 52)]}
        root = ade.write_ade_folder(tmp_path / "ADEChallengeData2016", sizes)
        labels = ["--data.benchmark", "ade20k"]  # the ADE layout's 150 classes, also for seg_custom.yaml
        data = ["--data.root", str(root), "--data.dataset", "null", *labels]
        return [*data, "--model.test_scale", "[64, 32]", *heads]

    return args


CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_runs_with_a_timm_backbone(config, data_args, tmp_path, caplog):
    cli = main(
        [
            "fit", "--config", config, "--model.backbone", "resnet18", "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path / "runs"), *COMMON, *data_args(config),
        ]
    )  # fmt: skip
    model = cli.model
    backbone = model.backbone_module()
    names = {n for n, _ in backbone.named_parameters()}
    assert any("layer4" in n for n in names) and not any("focal_layers" in n for n in names)  # a ResNet, not ours
    if any(k in (model.hparams.backbone_kwargs or {}) for k in ("embed_dim", "depths", "focal_windows")):
        assert "resnet18 is not a FocalNet: ignoring the FocalNet settings" in caplog.text
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])
    assert model.monitor in cli.trainer.callback_metrics  # validation ran and scored the split
