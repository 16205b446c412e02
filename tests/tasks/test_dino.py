"""DINO from its configs, as users run it: fit on a COCO folder, predict to a COCO results file that pycocotools
scores as the task does, a timm backbone in the same task, the demo config, and the backbone learning rate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from focalbench.callbacks.detection import CocoResultsWriter
from focalbench.cli import main
from focalbench.models.factory import TimmBackbone
from focalbench.tasks.dino import loss_group


def _load_detection_tests():
    # The COCO-folder fixture of the Mask R-CNN task tests, reused (tests are not a package: importlib import mode).
    path = Path(__file__).resolve().parent / "test_detection.py"
    spec = importlib.util.spec_from_file_location("detection_task_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


detection_tests = _load_detection_tests()
coco_root = detection_tests.coco_root  # 6 train / 5 val 64 px images, non-contiguous category ids, one crowd box
CATEGORY_IDS = detection_tests.CATEGORY_IDS

# A FocalNet of a few thousand parameters, a 1 + 2 layer transformer of width 32, 64 px detector input.
TINY_DINO = [
    "--model.backbone_kwargs", "{embed_dim: 8, depths: [1, 1, 1, 1], focal_windows: 9}",
    "--model.hidden_dim", "32", "--model.encoder_layers", "1", "--model.decoder_layers", "2",
    "--model.num_heads", "4", "--model.ffn_dim", "64", "--model.num_points", "2", "--model.num_queries", "30",
    "--model.num_dn_queries", "10", "--model.min_size", "[48, 64]", "--model.max_size", "64",
    "--model.num_select", "50", "--data.batch_size", "2", "--data.num_workers", "0",
    "--trainer.accelerator", "cpu", "--trainer.devices", "1",
]  # fmt: skip


# All 85 tokens of a 64 px image (8x8 + 4x4 + 2x2 + 1) become queries, all (query, class) pairs detections: a few
# epochs then place boxes at IoU > 0.5 on some objects, so the two mAPs compared are not both zero.
ALL_PROPOSALS = ["--model.num_queries", "100", "--model.num_select", "340"]


def run(*args: str):
    return main(list(args))


def test_loss_groups():
    assert [loss_group(n) for n in ("loss_ce", "loss_giou", "loss_bbox_0", "loss_ce_enc", "loss_giou_dn_3")] == [
        "loss_ce", "loss_giou", "loss_aux", "loss_enc", "loss_dn",
    ]  # fmt: skip


def test_coco_config_fast_dev_run(coco_root, tmp_path, one_thread):
    cli = run(
        "fit", "--config", "det_coco_dino.yaml", "--data.root", str(coco_root), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY_DINO,
    )  # fmt: skip
    model = cli.model
    assert model.hparams.num_classes == 4 and model.class_names == list(detection_tests.helpers.SHAPE_CLASSES)
    metrics = cli.trainer.callback_metrics
    for name in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_aux", "loss_enc", "loss_dn"):
        assert torch.isfinite(metrics[f"train_{name}"]), name
    for name in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_small", "bbox_mAR_100"):
        assert f"val_{name}" in metrics
    assert "val_segm_mAP" not in metrics
    assert cli.trainer.checkpoint_callback.monitor == "val_bbox_mAP"
    assert cli.datamodule.detr_crop == 0.5 and not cli.datamodule.with_masks
    # the published split: backbone at 1e-5, everything else at 1e-4, every trainable parameter in one group
    backbone = {id(p) for p in model.backbone_module().parameters()}
    groups = cli.trainer.optimizers[0].param_groups
    for group in groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(1e-5 if in_backbone.pop() else 1e-4)
    grouped = sum(len(g["params"]) for g in groups)
    assert grouped == len([p for p in model.parameters() if p.requires_grad])


def test_predict_json_scores_as_the_task_logs(coco_root, tmp_path, one_thread):
    out = tmp_path / "runs"
    fit = run(
        "fit", "--config", "det_coco_dino.yaml", "--data.root", str(coco_root), "--trainer.max_epochs", "4",
        "--trainer.default_root_dir", str(out), "--trainer.callbacks", "[]", "--trainer.check_val_every_n_epoch", "4",
        "--data.detr_crop", "0.0", *TINY_DINO, "--model.optimizer.init_args.lr", "0.002", *ALL_PROPOSALS,
    )  # fmt: skip
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    assert Path(checkpoint).is_file()
    common = ["--data.root", str(coco_root), "--trainer.default_root_dir", str(out), "--ckpt_path", checkpoint,
              *TINY_DINO, *ALL_PROPOSALS]  # fmt: skip
    validated = run("validate", "--config", "det_coco_dino.yaml", *common)
    logged = validated.trainer.callback_metrics
    predict_root = ["--data.predict_root", str(coco_root / "val2017")]
    predicted = run("predict", "--config", "det_coco_dino.yaml", *common, *predict_root)
    writer = next(cb for cb in predicted.trainer.callbacks if isinstance(cb, CocoResultsWriter))
    results = json.loads(writer.path.read_text())
    assert len(results) == 5 * 340  # num_select detections for each of the 5 validation images
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)

    gt = COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    evaluator = COCOeval(gt, gt.loadRes(str(writer.path)), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[1] > 0 and evaluator.stats[8] > 0  # some detections hit: not two zeros compared
    for i, name in {0: "mAP", 1: "mAP_50", 2: "mAP_75", 3: "mAP_small", 8: "mAR_100"}.items():
        assert float(logged[f"val_bbox_{name}"]) == pytest.approx(evaluator.stats[i], rel=1e-3, abs=1e-7), name


def test_timm_backbone_in_the_same_task(coco_root, tmp_path, one_thread):
    cli = run(
        "fit", "--config", "det_coco_dino.yaml", "--data.root", str(coco_root), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY_DINO, "--model.backbone", "resnet18",
        "--model.backbone_kwargs", "null",
    )  # fmt: skip
    backbone = cli.model.backbone_module()
    assert isinstance(backbone, TimmBackbone) and backbone.strides == [4, 8, 16, 32]
    # DINO-4scale reads strides 8-32 of the ResNet (128, 256, 512 channels) and adds stride 64
    assert [proj[0].in_channels for proj in cli.model.model.input_proj] == [128, 256, 512, 512]
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])
    assert "val_bbox_mAP" in cli.trainer.callback_metrics


def test_demo_config_runs_on_the_embedded_data(tmp_path, one_thread):
    cli = run(
        "fit", "--config", "demo_det_dino.yaml", "--trainer.fast_dev_run", "true", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert cli.datamodule.class_names == ["circle", "square", "star", "triangle"]
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])
    assert "val_bbox_mAP" in cli.trainer.callback_metrics
