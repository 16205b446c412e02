"""Segmentation from the configs, as users run it: the ADE20K recipe on an ADE-layout folder, the demo, predict,
TensorBoard output; mmseg's metric definitions and inference modes; DDP."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from focalbench.cli import CONFIG_DIR, main
from focalbench.data.sources import DataSourceError
from focalbench.tasks.segmentation import SegmentationTask, segmentation_scores
from focalbench.tasks.sliding_window import slide_inference

# Heads and evaluation scale small enough for 32-64 px CPU tests (the configs use 512 / 256 channels, (2048, 512)).
SMALL_HEADS = ["--model.decode_channels", "16", "--model.aux_channels", "8", "--trainer.precision", "32"]


def run(*args: str):
    return main(list(args))


def _tiny_task(**kwargs) -> SegmentationTask:
    torch.manual_seed(0)
    kwargs = {
        "backbone": "focalnet_tiny_lrf",
        "backbone_kwargs": {"embed_dim": 8, "depths": [1, 1, 1, 1], "focal_windows": 9},
        "num_classes": 3,
        "decode_channels": 16,
        "aux_channels": 8,
        "test_scale": None,
        **kwargs,
    }
    return SegmentationTask(**kwargs).eval()


def write_ade_folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    """``root/ADEChallengeData2016`` with jpg images and 0..150 label PNGs (0 = other), as users download it."""
    rng = np.random.default_rng(0)
    for split, shapes in sizes.items():
        for i, (h, w) in enumerate(shapes):
            name = f"ADE_{split}_{i:08d}"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            mask = np.zeros((h, w), np.uint8)
            mask[: h // 2] = 1 + i % 3  # wall / building / sky on top, "other" below, a band of class 150
            mask[h // 2 :, : w // 3] = 150
            image = rng.integers(0, 60, (h, w, 3)) + (mask[..., None] * np.array([1, 0.5, 0.2]))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / split / f"{name}.jpg")
            Image.fromarray(mask).save(root / "annotations" / split / f"{name}.png")
    return root


@pytest.fixture
def ade_folder(tmp_path: Path) -> Path:
    sizes = {"training": [(40, 48)] * 8, "validation": [(40, 48), (36, 52), (44, 40)]}
    return write_ade_folder(tmp_path / "ADEChallengeData2016", sizes)


def test_ade20k_config_fast_dev_run(ade_folder, tmp_path, tiny_args):
    cli = run(
        "fit", "--config", "seg_ade20k.yaml", "--data.root", str(ade_folder), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--model.test_scale", "[64, 32]", *SMALL_HEADS,
        *tiny_args,
    )  # fmt: skip
    model = cli.model
    assert model.hparams.num_classes == 150 and model.class_names[0] == "wall"  # linked from the data
    modulations = [m for m in model.model.backbone.modules() if hasattr(m, "kernel_sizes")]
    assert modulations and all(m.kernel_sizes == [9, 11, 13] for m in modulations)  # the dense focal window kept
    assert model.model.auxiliary_head is not None and model.hparams.aux_weight == 0.4
    metrics = cli.trainer.callback_metrics
    assert {"train_loss", "train_loss_decode", "train_loss_aux"} <= set(metrics)
    assert torch.isfinite(metrics["train_loss"]) and 0.0 <= float(metrics["val_mIoU"]) <= 1.0


def test_ade20k_config_carries_the_papers_recipe():
    config = yaml.safe_load((CONFIG_DIR / "seg_ade20k.yaml").read_text())
    trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    assert trainer["max_steps"] == 160_000 and data["batch_size"] * 8 == 16 and data["image_size"] == 512
    optimizer = model["optimizer"]["init_args"]
    assert (optimizer["lr"], optimizer["betas"], optimizer["weight_decay"]) == (6e-5, [0.9, 0.999], 0.01)
    assert (model["schedule"], model["poly_power"], model["warmup_steps"]) == ("poly", 1.0, 1500)
    assert model["backbone"] == "focalnet_tiny_lrf" and model["backbone_kwargs"]["focal_windows"] == 9
    assert (model["drop_path_rate"], model["aux_weight"], model["layer_decay"]) == (0.3, 0.4, None)
    assert (data["scale"], data["ratio_range"], data["cat_max_ratio"]) == ([2048, 512], [0.5, 2.0], 0.75)
    assert data["benchmark"] == "ade20k" and model["test_scale"] == [2048, 512]


def test_ade20k_config_offline_without_data_stops_with_both_options(tmp_path, tiny_args):
    with pytest.raises(DataSourceError, match=r"zhoubolei/scene_parse_150.*ADEChallengeData2016\.zip.*reach the hub"):
        run(
            "fit", "--config", "seg_ade20k.yaml", "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path / "runs"), *SMALL_HEADS, *tiny_args,
        )  # fmt: skip


def test_demo_config_runs_on_the_embedded_data(tmp_path):
    cli = run(
        "fit", "--config", "demo_seg.yaml", "--trainer.fast_dev_run", "true", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert cli.datamodule.class_names == ["background", "circle", "square", "star", "triangle"]
    assert cli.model.hparams.decode_channels == 32  # the measured recipe (header)
    assert torch.isfinite(cli.trainer.callback_metrics["val_mIoU"])


def test_custom_config_writes_tensorboard_pictures_scalars_and_checkpoints(tmp_path, tiny_args):
    cli = run(
        "fit", "--config", "seg_custom.yaml", "--data.root", "demo", "--model.pretrained", "null",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--data.scale", "[64, 64]", "--model.test_scale", "null", "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *SMALL_HEADS, *tiny_args,
    )  # fmt: skip
    assert cli.trainer.checkpoint_callback.monitor == "val_mIoU"
    checkpoints = {p.name for p in (tmp_path / "runs").rglob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("step000002-mIoU") for name in checkpoints)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next((tmp_path / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"val/segmentation", "val/class_iou", "val/focal_modulation"} <= set(tags["images"])
    scalars = {"train_loss", "train_loss_decode", "train_loss_aux", "val_loss", "val_mIoU", "val_mAcc", "val_aAcc"}
    assert scalars | {"val_IoU/background", "val_IoU/triangle"} <= set(tags["scalars"])
    assert "lr" in tags["scalars"]  # the base lr, one curve


def test_predict_writes_palette_pngs_at_the_original_size(tmp_path, tiny_args):
    sizes = {"a.jpg": (40, 48), "nested/b.png": (33, 57)}
    for name, (h, w) in sizes.items():
        (tmp_path / "new" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(tmp_path / "new" / name)
    cli = run(
        "predict", "--config", "demo_seg.yaml", "--data.predict_root", str(tmp_path / "new"),
        "--trainer.default_root_dir", str(tmp_path / "runs"), *SMALL_HEADS, *tiny_args,
    )  # fmt: skip
    writer = next(cb for cb in cli.trainer.callbacks if hasattr(cb, "written"))
    assert {p.as_posix().split("/predictions/")[1] for p in writer.written} == {"a.jpg.png", "nested/b.png.png"}
    for path in writer.written:
        mask = Image.open(path)
        original = sizes["a.jpg" if path.name == "a.jpg.png" else "nested/b.png"]
        assert mask.mode == "P" and mask.size == original[::-1]
        assert np.asarray(mask).max() < 5 and mask.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # VOC colours


def test_scores_follow_mmseg_over_the_whole_split():
    # Two images, 5 classes. Class 3 is predicted only on ignored pixels and class 4 never appears: their IoU is
    # undefined (union 0) and left out of the mean; class 2 is only predicted, never true: IoU 0, counted.
    task = _tiny_task(num_classes=5)
    targets = [torch.tensor([[0, 0, 0, 1], [1, 255, 255, 255]]), torch.tensor([[0, 1, 1, 255]])]
    preds = [torch.tensor([[0, 0, 1, 1], [2, 0, 3, 3]]), torch.tensor([[0, 1, 2, 3]])]
    task.infer = lambda images: [torch.nn.functional.one_hot(p, 5).permute(2, 0, 1).float() * 10 for p in preds]
    task.evaluation_step({"image": [None, None], "mask": targets}, "val")
    computed = task.stage_metrics("val").compute()
    scores = segmentation_scores(computed["confusion"])
    # by hand: class 0: |P∩G| = 3, |G| = 4, |P| = 3 → IoU 3/4; class 1: |P∩G| = 2, |G| = 4, |P| = 3 → 2/5;
    # class 2: |P∩G| = 0, |G| = 0, |P| = 2 → 0; classes 3, 4: union 0 → NaN. aAcc = 5/8.
    expected_iou = [3 / 4, 2 / 5, 0.0, math.nan, math.nan]
    torch.testing.assert_close(scores["IoU"], torch.tensor(expected_iou), equal_nan=True)
    assert scores["mIoU"].item() == pytest.approx((3 / 4 + 2 / 5 + 0) / 3)
    assert scores["mAcc"].item() == pytest.approx((3 / 4 + 2 / 4) / 2)  # Acc undefined where |G| = 0 (classes 2-4)
    assert scores["aAcc"].item() == pytest.approx(5 / 8)
    logged = task.summarize(computed, "val")  # what the task logs as val_mIoU, val_IoU/<class> …
    assert logged["mIoU"] == scores["mIoU"] and logged["IoU/0"] == pytest.approx(3 / 4)


def test_slide_equals_whole_below_the_crop_size_and_covers_larger_inputs():
    images = torch.randn(2, 3, 40, 48)
    whole = _tiny_task(inference="whole")
    slide = _tiny_task(inference="slide", crop_size=64, stride=43)
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(slide, images, 64, 43), whole(images), rtol=0, atol=0)
        assert all(torch.equal(a, b) for a, b in zip(slide.infer(list(images)), whole.infer(list(images))))
        windows = _tiny_task(inference="slide", crop_size=32, stride=21)  # 2 x 2 overlapping windows
        log_probs = windows.infer([images[0], images[1, :, :33, :45]])
    assert [lp.shape for lp in log_probs] == [(3, 40, 48), (3, 33, 45)]
    assert all(torch.isfinite(lp).all() for lp in log_probs)


def test_multi_scale_flip_averages_probabilities_at_the_original_size():
    task = _tiny_task(test_scale=(64, 32), test_scales=[0.5, 1.0, 1.75], test_flip=True)
    image = torch.randn(3, 37, 50)
    with torch.no_grad():
        log_probs = task.infer([image])[0]
        flipped = task.infer([image.flip(-1)])[0]
    assert log_probs.shape == (3, 37, 50)
    torch.testing.assert_close(log_probs.exp().sum(0), torch.ones(37, 50))
    torch.testing.assert_close(flipped.flip(-1), log_probs, rtol=1e-4, atol=1e-5)  # flip TTA is flip-invariant


def test_cross_entropy_ignores_255_and_weights_classes():
    task = _tiny_task(class_weights=[1.0, 2.0, 0.5])
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = 255
    expected = torch.nn.functional.cross_entropy(logits, target, weight=task.class_weights, ignore_index=255)
    torch.testing.assert_close(task._cross_entropy(logits, target), expected)
    empty = task._cross_entropy(logits, torch.full_like(target, 255))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("device, synced", [("cuda", True), ("cpu", False)])
def test_batchnorm_becomes_syncbatchnorm_under_multi_gpu_training(monkeypatch, device, synced):
    task = _tiny_task()
    trainer = SimpleNamespace(
        world_size=2, precision="32-true", strategy=SimpleNamespace(root_device=torch.device(device))
    )
    monkeypatch.setattr(SegmentationTask, "trainer", property(lambda self: trainer))
    task.setup("fit")
    norms = [m for m in task.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) == synced for m in norms)


@pytest.mark.slow
def test_two_process_validation_equals_one_process(tmp_path, tiny_args, cli_validate):
    # 5 validation images of different sizes: not divisible by 2 ranks, evaluated as lists at their original sizes
    sizes = {"training": [(40, 48)] * 4, "validation": [(40, 48), (36, 52), (44, 40), (33, 33), (48, 40)]}
    root = write_ade_folder(tmp_path / "ADEChallengeData2016", sizes)
    extra = ["--data.root", str(root), "--model.test_scale", "[64, 32]", *SMALL_HEADS, *tiny_args]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = cli_validate("seg_ade20k.yaml", 1, tmp_path / "one", extra)
    double = cli_validate("seg_ade20k.yaml", 2, tmp_path / "two", extra)
    assert {"val_mIoU", "val_mAcc", "val_aAcc", "val_loss", "val_IoU/wall", "val_IoU/chest_of_drawers"} <= set(single)
    for name, value in single.items():
        assert double[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name


@pytest.mark.slow  # 16 of the demo config's 36 epochs (the CI's 30 minutes): about 2 min on the 2-core CPU
def test_demo_recipe_learns_the_shapes(demo_metric):
    # measured 0.406 after these 16 epochs (the config's 36: 0.700); all background scores 0.165, and shapes found but
    # all called circles about 0.28 (the plateau before the shape classes are picked up)
    assert demo_metric("demo_seg.yaml", "val_mIoU", "--trainer.max_epochs", "16") > 0.33
