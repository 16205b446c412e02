"""Mask2Former from the configs, as users run it: ADE20K semantic and COCO panoptic recipes on tiny folders in the
layouts users download, the backbone swap, predict's COCO panoptic files, the backbone lr, and the evaluation glue
(post-processing at the original size) scoring perfect predictions as perfect."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from focalbench.cli import CONFIG_DIR, main
from focalbench.data.demo_panoptic import CATEGORIES, make_panoptic_scene, write_coco_panoptic
from focalbench.data.panoptic_format import rgb_to_id
from focalbench.data.sources import DataSourceError
from focalbench.models.factory import TimmBackbone
from focalbench.tasks.mask2former import Mask2FormerTask
from focalbench.tasks.sliding_window import slide_inference

# Mask2Former sizes small enough for 32-64 px CPU tests (the configs use 256 hidden, 100 queries, 10 + 6 layers).
SMALL = [
    "--model.hidden_dim", "32", "--model.num_queries", "6", "--model.decoder_layers", "2",
    "--model.encoder_layers", "1", "--model.num_attention_heads", "2", "--model.dim_feedforward", "32",
    "--model.encoder_feedforward_dim", "32", "--model.train_num_points", "64", "--trainer.precision", "32",
]  # fmt: skip
THINGS = [c["isthing"] == 1 for c in CATEGORIES]


def run(*args: str):
    return main(list(args))


def write_ade(root: Path) -> Path:
    """``ADEChallengeData2016/`` with label PNGs 0..150 (0 = other, ignored)."""
    rng = np.random.default_rng(0)
    for split, count in (("training", 4), ("validation", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((40, 48), np.uint8)
            mask[:20], mask[20:, :16] = 1 + i % 3, 150
            image = rng.integers(0, 60, (40, 48, 3)) + mask[..., None]
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / split / f"ADE_{i:04d}.jpg")
            Image.fromarray(mask).save(root / "annotations" / split / f"ADE_{i:04d}.png")
    return root


def write_panoptic(root: Path, train: int = 4, val: int = 2) -> Path:
    """A COCO-panoptic-layout folder (``panoptic_{train,val}2017``) of demo scenes with a void band and a crowd."""

    def scene(seed: int):
        image, ids, info = make_panoptic_scene(np.random.default_rng(seed), 48)
        ids[:2] = 0
        info[-1]["iscrowd"] = 1
        return image, ids, info

    splits = {"train": [scene(i) for i in range(train)], "val": [scene(100 + i) for i in range(val)]}
    return write_coco_panoptic(root, splits, CATEGORIES, year="2017")


def test_ade20k_config_fast_dev_run_with_a_tenth_of_the_lr_on_the_backbone(tmp_path, tiny_args):
    cli = run(
        "fit", "--config", "seg_ade20k_mask2former.yaml", "--data.root", str(write_ade(tmp_path / "ade")),
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--model.test_scale", "[64, 32]", *SMALL, *tiny_args,
    )  # fmt: skip
    model = cli.model
    assert model.hparams.num_classes == 150 and model.class_names[0] == "wall"
    modulations = [m for m in model.backbone_module().modules() if hasattr(m, "kernel_sizes")]
    assert modulations and all(m.kernel_sizes == [9, 11, 13] for m in modulations)
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train_loss"]) and 0.0 <= float(metrics["val_mIoU"]) <= 1.0
    backbone = {id(p) for p in model.backbone_module().parameters()}
    lrs = {any(id(p) in backbone for p in g["params"]): g["initial_lr"] for g in cli.trainer.optimizers[0].param_groups}
    assert lrs == {True: pytest.approx(1e-5), False: pytest.approx(1e-4)}  # backbone x0.1 of AdamW's 1e-4


def test_configs_carry_the_official_recipes():
    ade = yaml.safe_load((CONFIG_DIR / "seg_ade20k_mask2former.yaml").read_text())
    coco = yaml.safe_load((CONFIG_DIR / "panoptic_coco_mask2former.yaml").read_text())
    for config in (ade, coco):
        model, trainer = config["model"]["init_args"], config["trainer"]
        assert model["optimizer"]["init_args"]["lr"] == 1e-4 and model["optimizer"]["init_args"]["weight_decay"] == 0.05
        assert model["backbone_lr_mult"] == 0.1 and trainer["gradient_clip_val"] == 0.01
        assert (model["num_queries"], model["decoder_layers"], model["encoder_layers"]) == (100, 10, 6)
        weights = (model["class_weight"], model["mask_weight"], model["dice_weight"], model["no_object_weight"])
        assert weights == (2.0, 5.0, 5.0, 0.1) and model["train_num_points"] == 112 * 112
        assert model["backbone"] == "focalnet_tiny_lrf" and model["backbone_kwargs"]["focal_windows"] == 9
    assert ade["trainer"]["max_steps"] == 160_000 and ade["model"]["init_args"]["schedule"] == "poly"
    assert ade["data"]["init_args"]["image_size"] == 512 and ade["data"]["init_args"]["ratio_range"] == [0.5, 2.0]
    assert coco["trainer"]["max_epochs"] == 50 and coco["data"]["init_args"]["image_size"] == 1024
    assert coco["data"]["init_args"]["scale_range"] == [0.1, 2.0]
    assert (coco["model"]["init_args"]["object_mask_threshold"], coco["model"]["init_args"]["overlap_threshold"]) == (
        0.8,
        0.8,
    )


def test_panoptic_config_fast_dev_run_on_a_coco_panoptic_folder(tmp_path, tiny_args):
    cli = run(
        "fit", "--config", "panoptic_coco_mask2former.yaml", "--data.root", str(write_panoptic(tmp_path / "coco")),
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--model.test_scale", "null", *SMALL, *tiny_args,
    )  # fmt: skip
    model = cli.model
    assert model.class_names == [c["name"] for c in CATEGORIES] and model.monitor == "val_PQ"
    assert model.stage_metrics("val").things.tolist() == THINGS  # thing / stuff split read from the data's isthing
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train_loss"]) and 0.0 <= float(metrics["val_PQ"]) <= 1.0
    assert {"val_PQ_things", "val_PQ_stuff", "val_SQ", "val_RQ"} <= set(metrics)


def test_panoptic_fast_dev_run_on_a_saved_hugging_face_dataset(tmp_path, tiny_args):
    """The same model on the COCO panoptic content as a ``save_to_disk`` folder: id arrays, columnar segments
    without ``isthing`` (the thing classes then come from ``model.thing_classes``), renamed columns."""
    spec = importlib.util.spec_from_file_location("panoptic_data", CONFIG_DIR.parent / "tests/data/test_panoptic.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    root = helpers.saved_dataset(tmp_path / "saved", layout="columnar")
    cli = run(
        "fit", "--config", "demo_panoptic.yaml", "--data.root", str(root), "--data.panoptic_column", "ids",
        "--data.segments_column", "segments", "--data.class_names", json.dumps(helpers.NAMES),
        "--model.thing_classes", json.dumps(helpers.NAMES[:4]), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *SMALL, *tiny_args,
    )  # fmt: skip
    assert cli.model.class_names == helpers.NAMES and cli.model.stage_metrics("val").things.tolist() == THINGS
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"]) and "val_PQ_stuff" in cli.trainer.callback_metrics


def test_backbone_swap_to_a_timm_model(tmp_path):
    cli = run(
        "fit", "--config", "panoptic_coco_mask2former.yaml", "--data.root", str(write_panoptic(tmp_path / "coco")),
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--model.backbone", "resnet18", "--model.backbone_kwargs", "null", "--model.test_scale", "null",
        "--data.image_size", "32", "--data.batch_size", "2", "--data.num_workers", "0", *SMALL,
    )  # fmt: skip
    assert isinstance(cli.model.backbone_module(), TimmBackbone)
    assert cli.model.model.net.model.pixel_level_module.encoder.channels == [64, 128, 256, 512]
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])


def test_offline_hub_ids_stop_with_the_one_line_errors(tmp_path, monkeypatch, tiny_args):
    # data: neither ADEChallengeData2016/ nor the hub copy -> the segmentation data's error naming both
    with pytest.raises(DataSourceError, match=r"zhoubolei/scene_parse_150.*ADEChallengeData2016\.zip.*reach the hub"):
        run(
            "fit", "--config", "seg_ade20k_mask2former.yaml", "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path / "runs"), *SMALL, *tiny_args,
        )  # fmt: skip
    # weights: a hub id offline -> the backbone factory's line (jsonargparse reports it under the model key)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match=r"hub id 'timm/focalnet_tiny_lrf\.ms_in1k'.*pass its local path"):
        run(
            "fit", "--config", "seg_ade20k_mask2former.yaml", "--data.root", str(write_ade(tmp_path / "ade")),
            "--model.pretrained", "timm/focalnet_tiny_lrf.ms_in1k", "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path / "runs"), *SMALL, *tiny_args,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("config", "hub_id"),
    [("seg_ade20k_mask2former.yaml", "zhoubolei/scene_parse_150"), ("panoptic_coco_mask2former.yaml", "no-such/pano")],
)
def test_offline_hub_data_from_the_command_line_is_one_error_line_and_exit_2(config, hub_id, tmp_path, monkeypatch,
                                                                              capfd):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FOCALBENCH_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["cli.py", "fit", "--config", config, "--data.dataset", hub_id])
    with pytest.raises(SystemExit) as info:
        main()
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: could not load the hub data set '{hub_id}'") and "--data.root" in lines[0]


def test_predict_writes_coco_panoptic_results(tmp_path, tiny_args, monkeypatch):
    root = write_panoptic(tmp_path / "coco")
    # a network that segments every image into three bands: sky (class 4), a circle (class 0), ground (class 5)
    bands = torch.zeros(48, 48, dtype=torch.long)
    bands[:16], bands[16:24], bands[24:] = 0, 1, 2
    stand_in = Perfect(torch.stack([bands == k for k in range(3)]), [4, 0, 5], 6)
    monkeypatch.setattr(Mask2FormerTask, "network", lambda self: stand_in)
    cli = run(
        "predict", "--config", "demo_panoptic.yaml", "--data.root", str(root),
        "--data.predict_root", str(root / "val2017"), "--trainer.default_root_dir", str(tmp_path / "runs"),
        *SMALL, *tiny_args,
    )  # fmt: skip
    writer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "PanopticWriter")
    results = json.loads(writer.path.read_text())["annotations"]  # re-read as panopticapi reads it
    assert [(r["file_name"], r["image_id"]) for r in results] == [("00000.png", 1), ("00001.png", 2)]
    for result in results:
        png = np.asarray(Image.open(writer.path.parent / "panoptic" / result["file_name"]).convert("RGB"))
        assert png.shape == (48, 48, 3)  # the original size
        ids = rgb_to_id(png)
        assert 0 not in ids  # every pixel belongs to a segment
        category = {s["id"]: s["category_id"] for s in result["segments_info"]}
        assert set(np.unique(ids).tolist()) == set(category)  # every listed segment has pixels, and no others
        # the data's own category ids (sky 5, circle 1, ground 6), band by band
        assert [category[int(ids[row, 0])] for row in (0, 20, 40)] == [5, 1, 6]
        assert all(len(np.unique(ids[a:b])) == 1 for a, b in ((0, 16), (16, 24), (24, 48)))


class Perfect:
    """A stand-in network whose queries predict the given segments exactly: one query per (class, mask) with a
    one-hot class logit, the rest "no object"; mask logits ±20 at 1/4 of the padded input, as Mask2Former's."""

    def __init__(self, masks: torch.Tensor, classes: list[int], num_classes: int, queries: int = 8) -> None:
        self.masks, self.classes, self.k, self.q = masks, classes, num_classes, queries

    def __call__(self, images: torch.Tensor):
        h, w = images.shape[-2:]
        padded = (-(-h // 32) * 32, -(-w // 32) * 32)
        logits = torch.zeros(1, self.q, self.k + 1)
        logits[0, :, self.k] = 20.0  # no object
        masks = torch.full((1, self.q, *padded), -20.0)
        for i, (mask, label) in enumerate(zip(self.masks, self.classes)):
            logits[0, i] = 0.0
            logits[0, i, label] = 20.0
            masks[0, i, : mask.shape[0], : mask.shape[1]][mask] = 20.0
        quarter = F.avg_pool2d(masks, 4)  # block-aligned masks stay ±20 at stride 4
        return SimpleNamespace(class_queries_logits=logits, masks_queries_logits=quarter)


def _task(mode: str, num_classes: int, **kwargs) -> Mask2FormerTask:
    task = Mask2FormerTask(
        mode=mode, backbone="resnet18", num_classes=num_classes, hidden_dim=32, num_queries=8, decoder_layers=2,
        encoder_layers=1, num_attention_heads=2, dim_feedforward=32, encoder_feedforward_dim=32, test_scale=None,
        **kwargs,
    )  # fmt: skip
    return task.eval()


def test_perfect_panoptic_predictions_score_pq_one_at_the_original_size():
    # 56 x 64: padded to 64 x 64 by the model, cropped back by the task. Full-width bands on the stride-4 grid, so
    # the stand-in's stride-4 masks upsample to them exactly (corners would be rounded off, as any Mask2Former's)
    ids = torch.zeros(56, 64, dtype=torch.long)
    ids[:16], ids[16:24], ids[24:32], ids[32:40], ids[40:52] = 1, 3, 2, 4, 2  # sky, circle, ground, circle, ground
    # rows 52-55 void: whatever is predicted there leaves the union
    info = [
        {"id": 1, "category_id": 4, "iscrowd": 0},
        {"id": 2, "category_id": 5, "iscrowd": 0},
        {"id": 3, "category_id": 0, "iscrowd": 0},
        {"id": 4, "category_id": 0, "iscrowd": 0},
    ]
    task = _task("panoptic", 6, thing_classes=["circle", "square", "star", "triangle"], class_names=[
        c["name"] for c in CATEGORIES])  # fmt: skip
    task.setup("validate")
    masks = torch.stack([ids == s["id"] for s in info])
    task.network = lambda: Perfect(masks, [s["category_id"] for s in info], 6)
    batch = {"image": [torch.zeros(3, 56, 64)], "segments": [ids], "segments_info": [info]}
    (prediction,) = task.evaluation_step(batch, "val")
    assert prediction["segmentation"].shape == (56, 64)
    scores = task.summarize(task.stage_metrics("val").compute(), "val")
    # every segment matched with IoU 1 (the void band leaves the union): PQ = SQ = RQ = 1 for circle, sky, ground
    assert scores["PQ"].item() == pytest.approx(1.0) and scores["PQ_things"].item() == pytest.approx(1.0)
    assert scores["PQ_stuff"].item() == pytest.approx(1.0)
    assert set(k for k in scores if k.startswith("PQ/")) == {"PQ/circle", "PQ/sky", "PQ/ground"}  # absent: no key


def test_perfect_semantic_predictions_score_miou_one():
    mask = torch.full((44, 40), 255, dtype=torch.uint8)  # ignored everywhere but three regions
    mask[:20], mask[20:32], mask[32:40] = 0, 2, 1  # bands on the stride-4 grid; rows 40-43 ignored
    task = _task("semantic", 3)
    classes, masks = [0, 1, 2], [mask == c for c in range(3)]
    task.network = lambda: Perfect(torch.stack(masks), classes, 3)
    (prediction,) = task.evaluation_step({"image": [torch.zeros(3, 44, 40)], "mask": [mask]}, "val")
    labelled = mask != 255  # the ignored rows get some class: they are not scored
    assert prediction.shape == (44, 40) and torch.equal(prediction[labelled], mask.long()[labelled])
    scores = task.summarize(task.stage_metrics("val").compute(), "val")
    assert scores["mIoU"].item() == pytest.approx(1.0) and scores["aAcc"].item() == pytest.approx(1.0)


class SignOfChannel0:
    """A stand-in network that segments any input by the sign of its first channel: query 0 = class 0 where it is
    negative, query 1 = class 1 where it is positive (mask logits ±20 at 1/4 of the padded input), the rest "no
    object". It sees only what it is given, so sliding windows must be cut and put back in the right place."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, images: torch.Tensor):
        self.calls.append(tuple(images.shape[-2:]))
        h, w = images.shape[-2:]
        padded = F.pad(images[:, :1], (0, -w % 32, 0, -h % 32))
        positive = torch.where(padded > 0, 20.0, -20.0)
        logits = torch.zeros(1, 6, 3)
        logits[0, :, 2] = 20.0
        logits[0, 0], logits[0, 1] = torch.tensor([20.0, 0.0, 0.0]), torch.tensor([0.0, 20.0, 0.0])
        masks = torch.cat([-positive, positive, torch.full_like(positive, -20.0).expand(-1, 4, -1, -1)], 1)
        return SimpleNamespace(class_queries_logits=logits, masks_queries_logits=F.avg_pool2d(masks, 4))


def test_semantic_sliding_windows_put_each_window_back_in_place():
    # 8 x 8 blocks of +1 / -1 in a 64 x 96 image (no padding: stride-4 masks reproduce the blocks exactly);
    # 32-pixel windows every 20: rows start at 0, 20, 32 and columns at 0, 20, 40, 60, 64 (the last flush with the
    # border), all on the stride-4 grid, so every window sees whole 4 x 4 cells
    blocks = (torch.arange(64)[:, None] // 8 + torch.arange(96)[None] // 8) % 2
    image = (2.0 * blocks - 1).expand(3, -1, -1).clone()
    predictions = {}
    for inference in ("whole", "slide"):
        task = _task("semantic", 2, inference=inference, crop_size=32, stride=20)
        network = SignOfChannel0()
        task.network = lambda network=network: network
        (predictions[inference],) = task.infer([image])
        predictions[inference + "_calls"] = network.calls
    assert predictions["whole_calls"] == [(64, 96)] and predictions["slide_calls"] == [(32, 32)] * 15
    assert torch.equal(predictions["whole"], blocks) and torch.equal(predictions["slide"], blocks)


def test_semantic_slide_equals_whole_below_the_crop_size():
    torch.manual_seed(0)
    whole = _task("semantic", 3)
    slide = _task("semantic", 3, inference="slide", crop_size=64, stride=43)
    slide.load_state_dict(whole.state_dict())
    images = [torch.randn(3, 40, 44), torch.randn(3, 64, 48)]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(slide.infer(images), whole.infer(images)))
        torch.testing.assert_close(
            slide_inference(slide.semantic_scores, images[0][None], 64, 43),
            whole.semantic_scores(images[0][None]), rtol=0, atol=0,
        )  # fmt: skip


def test_instance_mode_trains_and_scores_coco_ap_on_a_coco_folder(tmp_path, tiny_args):
    """Instance segmentation through the same model, on the existing COCO reader (0..1 images normalised by the
    task, labels 1..K back from the queries' 0..K-1)."""
    from focalbench.data.demo import SHAPE_CLASSES, make_scene

    root = tmp_path / "coco"
    for split, count in (("train", 4), ("val", 2)):
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(count):
            scene = make_scene(np.random.default_rng([split == "val", i]), image_size=48, task="detection")
            Image.fromarray(scene.image).save(root / split / f"{i}.png")
            images.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 48})
            for inst in scene.instances:
                x1, y1, x2, y2 = inst.box
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": inst.label + 1, "iscrowd": 0,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": [inst.polygon.ravel().tolist()],
                })  # fmt: skip
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(SHAPE_CLASSES)]
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    config = {
        "model": {"class_path": "focalbench.tasks.mask2former.Mask2FormerTask",
                  "init_args": {"mode": "instance", "backbone": "focalnet_tiny_lrf", "test_scale": None}},
        "data": {"class_path": "focalbench.data.detection.DetectionDataModule", "init_args": {"root": str(root)}},
    }  # fmt: skip
    (tmp_path / "instance.yaml").write_text(yaml.safe_dump(config))
    cli = run(
        "fit", "--config", str(tmp_path / "instance.yaml"), "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *SMALL, *tiny_args,
    )  # fmt: skip
    assert cli.model.monitor == "val_segm_mAP" and cli.model.class_names == list(SHAPE_CLASSES)
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train_loss"])
    assert {"val_bbox_mAP", "val_segm_mAP"} <= set(metrics) and -1.0 <= float(metrics["val_segm_mAP"]) <= 1.0


def test_perfect_instance_predictions_score_ap_one():
    # two squares (class 1 -> label 2) and a circle (class 0 -> label 1), block-aligned, in a 48 x 40 image
    masks = torch.zeros(3, 48, 40, dtype=torch.bool)
    masks[0, 4:16, 4:16], masks[1, 24:40, 8:20], masks[2, 20:44, 24:36] = True, True, True
    task = _task("instance", 4)
    task.network = lambda: Perfect(masks, [1, 1, 0], 4)
    boxes = torch.tensor([[4, 4, 16, 16], [8, 24, 20, 40], [24, 20, 36, 44]], dtype=torch.float)
    target = {"boxes": boxes, "labels": torch.tensor([2, 2, 1]), "masks": masks.to(torch.uint8),
              "iscrowd": torch.zeros(3, dtype=torch.long), "area": masks.flatten(1).sum(1).float()}  # fmt: skip
    image = torch.rand(3, 48, 40)  # 0..1, as the detection data gives it
    (prediction,) = task.evaluation_step({"image": [image], "target": [target]}, "val")
    assert prediction["masks"].shape[1:] == (48, 40)
    top = prediction["scores"].argsort(descending=True)[:3]
    assert sorted(prediction["labels"][top].tolist()) == [1, 2, 2]  # back to the data's labels 1..K
    scores = task.summarize(task.stage_metrics("val").compute(), "val")
    # corners rounded by the stride-4 masks keep IoU > 0.95, so every COCO threshold matches
    assert scores["segm_mAP"].item() == pytest.approx(1.0) and scores["bbox_mAP"].item() == pytest.approx(1.0)


def test_tensorboard_gets_panoptic_overlays_pq_per_class_and_checkpoints(tmp_path, tiny_args):
    cli = run(
        "fit", "--config", "demo_panoptic.yaml", "--data.root", str(write_panoptic(tmp_path / "coco")),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1", "--model.object_mask_threshold", "0.0", "--model.overlap_threshold", "0.0",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *SMALL, *tiny_args,
    )  # fmt: skip
    assert cli.trainer.checkpoint_callback.monitor == "val_PQ"
    checkpoints = {p.name for p in (tmp_path / "runs").rglob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("step000001-PQ") for name in checkpoints)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next((tmp_path / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"val/panoptic", "val/class_pq"} <= set(tags["images"])
    assert {"train_loss", "val_PQ", "val_PQ_things", "val_PQ_stuff", "val_SQ", "val_RQ"} <= set(tags["scalars"])


def test_demo_config_runs_on_the_embedded_panoptic_scenes(tmp_path):
    cli = run(
        "fit", "--config", "demo_panoptic.yaml", "--trainer.fast_dev_run", "true", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert cli.datamodule.class_names == ["circle", "square", "star", "triangle", "sky", "ground"]
    assert cli.model.stage_metrics("val").things.tolist() == THINGS
    assert len(cli.datamodule.train_set) == 400 and len(cli.datamodule.val_set) == 60
    assert torch.isfinite(cli.trainer.callback_metrics["val_PQ"])


def test_loss_weights_reach_transformers_loss_and_matcher():
    task = _task("panoptic", 6, thing_classes=["a"], class_names=list("abcdef"), class_weight=10.0,
                 mask_weight=4.0, dice_weight=3.0, no_object_weight=0.5)  # fmt: skip
    net = task.model.net
    assert net.weight_dict == {"loss_cross_entropy": 10.0, "loss_mask": 4.0, "loss_dice": 3.0}
    matcher = net.criterion.matcher
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice) == (10.0, 4.0, 3.0)
    assert net.criterion.empty_weight.tolist() == [1.0] * 6 + [0.5]  # the no-object class's weight


@pytest.mark.slow
def test_demo_recipe_learns_things_and_stuff(tmp_path):
    cli = run(
        "fit", "--config", "demo_panoptic.yaml", "--trainer.max_epochs", "6", "--trainer.check_val_every_n_epoch", "6",
        "--data.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.callbacks", "[]",
    )  # fmt: skip
    metrics = cli.trainer.callback_metrics
    # measured after this 6-epoch schedule: PQ 0.477, things 0.259, stuff 0.914 (the config's 10 epochs: 0.709,
    # 0.585, 0.957). Stuff alone, with every thing missed, would give PQ 2 x 0.914 / 6 = 0.30.
    assert float(metrics["val_PQ_things"]) > 0.15 and float(metrics["val_PQ_stuff"]) > 0.85
    assert float(metrics["val_PQ"]) > 0.40
