"""Detection from the configs, as users run it: fit on a COCO folder, mAP equal to pycocotools' COCOeval, predict
to a COCO results file, the demo recipe, and 2-process evaluation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from focalbench.callbacks.detection import CocoResultsWriter, coco_results
from focalbench.cli import main
from focalbench.data.coco import encode_mask
from focalbench.data.detection import DetectionDataModule
from focalbench.tasks.detection import detection_metric, metric_inputs, summarize_map


def _load_data_helpers():
    # The COCO-folder writer lives beside the data tests; tests are not a package (importlib import mode).
    path = Path(__file__).resolve().parents[1] / "data" / "test_detection.py"
    spec = importlib.util.spec_from_file_location("detection_data_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _load_data_helpers()
CATEGORY_IDS = helpers.CATEGORY_IDS

# A FocalNet of a few thousand parameters with the dense-task focal window, 64 px detector input, few proposals.
TINY_DET = [
    "--model.backbone_kwargs", "{embed_dim: 8, depths: [1, 1, 1, 1], focal_windows: 9}",
    "--model.min_size", "64", "--model.max_size", "64", "--model.detector_kwargs",
    "{rpn_pre_nms_top_n_train: 64, rpn_post_nms_top_n_train: 32, rpn_pre_nms_top_n_test: 64,"
    " rpn_post_nms_top_n_test: 32, box_batch_size_per_image: 32, box_score_thresh: 0.0}",
    "--data.batch_size", "2", "--data.num_workers", "0",
    "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32",
]  # fmt: skip


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    helpers.write_coco(tmp_path / "coco", "train", 6, seed=0, suffix="2017")
    helpers.write_coco(tmp_path / "coco", "val", 5, seed=1, suffix="2017")
    return tmp_path / "coco"


def run(*args: str):
    return main(list(args))


def test_coco_config_fast_dev_run(coco_root, tmp_path):
    cli = run(
        "fit", "--config", "det_coco.yaml", "--data.root", str(coco_root), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *TINY_DET,
    )  # fmt: skip
    assert cli.model.hparams.num_classes == 4 and cli.model.class_names == list(helpers.SHAPE_CLASSES)
    metrics = cli.trainer.callback_metrics
    for name in ("classifier", "box_reg", "mask", "objectness", "rpn_box_reg"):
        assert torch.isfinite(metrics[f"train_loss_{name}"])
    assert torch.isfinite(metrics["train_loss"])
    for name in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_small", "segm_mAP", "segm_mAP_large"):
        assert f"val_{name}" in metrics
    assert cli.trainer.checkpoint_callback.monitor == "val_bbox_mAP"


def test_faster_rcnn_multi_scale_fit_with_tensorboard_images(coco_root, tmp_path):
    out = tmp_path / "runs"
    cli = run(
        "fit", "--config", "det_coco_3x.yaml", "--data.root", str(coco_root), "--model.with_masks", "false",
        "--data.with_masks", "false", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(out),
        "--trainer.limit_train_batches", "2", "--trainer.log_every_n_steps", "1", *TINY_DET,
        "--model.min_size", "[48, 64]",
    )  # fmt: skip
    assert cli.model.model.transform.min_size == (48, 64)
    assert not hasattr(cli.model.model.roi_heads, "mask_head") or cli.model.model.roi_heads.mask_head is None
    metrics = cli.trainer.callback_metrics
    assert "val_bbox_mAP" in metrics and "val_segm_mAP" not in metrics and "train_loss_mask" not in metrics

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next(out.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    assert "val/detections" in accumulator.Tags()["images"]
    assert {"train_loss", "train_loss_classifier", "val_bbox_mAP"} <= set(accumulator.Tags()["scalars"])
    assert "lr" in accumulator.Tags()["scalars"]  # the base lr, one curve


def fixed_predictions(dm: DetectionDataModule, seed: int = 0) -> list[dict]:
    """torchvision-like outputs for the validation images: jittered ground truth (sometimes the wrong class, masks
    shifted a pixel), detections on crowd regions, and false positives; scores distinct."""
    rng = np.random.default_rng(seed)
    outputs = []
    for index in range(len(dm.val_set)):
        target = dm.val_set[index]["target"]
        height, width = target["masks"].shape[1:] if len(target["masks"]) else (64, 64)
        boxes, labels, masks = [], [], []
        for box, label, mask in zip(target["boxes"].tolist(), target["labels"].tolist(), target["masks"]):
            boxes.append(np.clip(np.array(box) + rng.normal(0, 1.5, 4), 0, 64))
            labels.append(label if rng.uniform() < 0.8 else int(rng.integers(1, 5)))
            masks.append(np.roll(mask.numpy(), int(rng.integers(-2, 3)), axis=1))
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 48, 2)
            w, h = rng.uniform(4, 16, 2)
            boxes.append(np.array([x, y, x + w, y + h]))
            labels.append(int(rng.integers(1, 5)))
            fp = np.zeros((height, width), np.uint8)
            fp[int(y) : int(y + h), int(x) : int(x + w)] = 1
            masks.append(fp)
        probs = np.stack(masks).astype(np.float32) * rng.uniform(0.55, 1.0, (len(masks), 1, 1))
        outputs.append(
            {
                "boxes": torch.tensor(np.stack(boxes), dtype=torch.float32),
                "scores": torch.tensor(rng.permutation(len(boxes)) / 10 + rng.uniform(0, 0.05), dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.from_numpy(probs)[:, None],  # (N, 1, H, W) probabilities, as torchvision's
            }
        )
    return outputs


def cocoeval_stats(gt: COCO, results: list[dict], iou_type: str, category: int | None = None) -> np.ndarray:
    evaluator = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
    if category is not None:
        evaluator.params.catIds = [category]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


def test_map_equals_pycocotools_cocoeval(coco_root, capsys):
    dm = DetectionDataModule(root=str(coco_root), num_workers=0)
    dm.setup("validate")
    outputs = fixed_predictions(dm)
    targets = [dm.val_set[i]["target"] for i in range(len(dm.val_set))]
    assert sum(int(t["iscrowd"].sum()) for t in targets) == 1

    metric = detection_metric(with_masks=True)  # the task's metric code, fed in two batches
    for part in (slice(0, 2), slice(2, None)):
        metric.update(*metric_inputs(outputs[part], targets[part], with_masks=True, mask_threshold=0.5))
    ours = summarize_map(metric.compute(), dm.class_names, "val_", with_masks=True)

    results = []
    for out, target, sample in zip(outputs, targets, dm.val_set):
        item = {k: out[k] for k in ("boxes", "scores", "labels")}
        item.update(image_id=target["image_id"], file_name=sample["file_name"])
        item["masks"] = [encode_mask(m) for m in (out["masks"][:, 0] > 0.5).numpy()]
        results += coco_results(item, dm.category_ids)  # labels back to the original (non-contiguous) ids
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    gt = COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    names = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large")
    for iou_type in ("bbox", "segm"):
        stats = cocoeval_stats(gt, results, iou_type)
        assert stats[0] > 0.1  # a meaningful comparison, not two zeros
        for i, name in enumerate(names):
            assert float(ours[f"val_{iou_type}_{name}"]) == pytest.approx(stats[i], abs=1e-4), (iou_type, name)
        assert float(ours[f"val_{iou_type}_mAR_100"]) == pytest.approx(stats[8], abs=1e-4)
        for category_id, name in zip(dm.category_ids, dm.class_names):
            expected = cocoeval_stats(gt, results, iou_type, category_id)[0]
            assert float(ours[f"val_{iou_type}_AP/{name}"]) == pytest.approx(expected, abs=1e-4), (iou_type, name)


def test_predict_writes_coco_results_with_original_category_ids(coco_root, tmp_path):
    out = tmp_path / "runs"
    cli = run(
        "predict", "--config", "det_coco.yaml", "--data.root", str(coco_root),
        "--data.predict_root", str(coco_root / "val2017"), "--trainer.default_root_dir", str(out),
        "--trainer.callbacks+=focalbench.callbacks.detection.CocoResultsWriter",
        "--trainer.callbacks.draw_images=true", "--trainer.callbacks.score_threshold=0.0", *TINY_DET,
    )  # fmt: skip
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, CocoResultsWriter))
    assert writer.draw_images  # the configured writer was kept, not replaced by the task's default
    results = json.loads(writer.path.read_text())
    assert results, "box_score_thresh 0 keeps the untrained model's detections"
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    assert {r["image_id"] for r in results} <= set(range(100, 105))
    assert all(len(r["bbox"]) == 4 and "segmentation" in r and r["file_name"].endswith(".png") for r in results)
    gt = COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    loaded = gt.loadRes(str(writer.path))
    assert len(loaded.getAnnIds()) == len(results)
    assert len(list((writer.path.parent / "images").glob("*.png"))) == 5


def test_demo_config_runs_on_the_embedded_data(tmp_path):
    cli = run(
        "fit", "--config", "demo_det.yaml", "--trainer.fast_dev_run", "true", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert cli.datamodule.class_names == ["circle", "square", "star", "triangle"]
    assert cli.model.hparams.num_classes == 4
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])
    assert "val_bbox_mAP" in cli.trainer.callback_metrics
    # the measured recipe (config header): 32 sampled RoIs an image, one RoIAlign sample a bin, 3x3 focal window
    roi_heads = cli.model.model.roi_heads
    assert roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert roi_heads.box_roi_pool.sampling_ratio == roi_heads.mask_roi_pool.sampling_ratio == 1
    assert cli.model.hparams.backbone_kwargs["focal_windows"] == 3


@pytest.mark.slow
def test_demo_recipe_learns(demo_metric):
    # measured 0.276 after a 2-epoch schedule (the config's 8 epochs: 0.787)
    assert demo_metric("demo_det.yaml", "val_bbox_mAP", "--trainer.max_epochs", "2") > 0.2


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(coco_root, tmp_path, cli_validate):
    helpers.write_coco(coco_root, "val", 7, seed=3, suffix="2017")  # 7 images: not divisible by 2 ranks x batch 2
    extra = [
        "--data.root", str(coco_root), *[a for a in TINY_DET if a not in ("--trainer.devices", "1")],
        "--trainer.limit_val_batches", "1.0",
    ]  # fmt: skip
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = cli_validate("det_coco.yaml", 1, tmp_path / "one", extra)
    double = cli_validate("det_coco.yaml", 2, tmp_path / "two", extra)
    assert {"val_bbox_mAP", "val_segm_mAP", "val_bbox_mAP_50"} <= set(single)
    assert single["val_bbox_mAP"] > 0  # box_score_thresh 0: the untrained model's detections hit something
    for name, value in single.items():
        assert double[name] == pytest.approx(value, abs=1e-6), name
