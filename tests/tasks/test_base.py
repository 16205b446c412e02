"""BaseTask: the learning-rate schedule per optimizer step (warm-up, cosine, poly, step milestones, min lr) and
layer-wise lr decay, checked against hand-computed values on real (tiny) fits; streamed data trains at a real lr;
freezing, stage freezing, gradient checkpointing and compile for FocalNet and timm backbones (which tensors move
over a run and which stay bit-identical)."""

from __future__ import annotations

import copy
import importlib
import math
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader

from focalbench.cli import main
from focalbench.data.classification import ClassificationDataModule
from focalbench.errors import ConfigError
from focalbench.models import fused
from focalbench.models.contract import layer_ids
from focalbench.tasks.classification import ClassificationTask
from focalbench.tasks.optim import default_optimizer
from focalbench.tasks.segmentation import SegmentationTask

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"embed_dim": 8, "depths": [1, 1, 1, 1]}
BASE_LR = 0.1


class LrPerStep(Callback):
    """The lr of every parameter group at each optimizer step (the scheduler moves after each step)."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])


def sgd(params):
    return torch.optim.SGD(params, lr=BASE_LR, momentum=0.9)


def task(backbone: str = "focalnet_tiny_srf", **kwargs) -> ClassificationTask:
    backbone_kwargs = TINY if backbone.startswith("focalnet") else None
    kwargs = {"optimizer": sgd, "label_smoothing": 0.0, "drop_path_rate": 0.0, **kwargs}
    return ClassificationTask(backbone=backbone, backbone_kwargs=backbone_kwargs, num_classes=3, **kwargs)


def samples(count: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, 32, 32, generator=generator), "label": i % 3} for i in range(count)]


def fit(model, tmp_path: Path, train, *, epochs: int = 1, accumulate: int = 1, max_steps: int = -1, val=None):
    """Train ``model`` with ``train`` (a loader or a data module); returns the per-step lrs and the trainer."""
    record = LrPerStep()
    trainer = Trainer(
        accelerator="cpu", max_epochs=epochs, max_steps=max_steps, accumulate_grad_batches=accumulate,
        callbacks=[record], logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, limit_val_batches=1, deterministic=True,
    )  # fmt: skip
    if isinstance(train, DataLoader):
        val = val or DataLoader(samples(2, seed=1), batch_size=2)
        trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    else:
        trainer.fit(model, datamodule=train)
    return record.lrs, trainer


def loader(batches: int) -> DataLoader:
    return DataLoader(samples(2 * batches), batch_size=2)


def first_group(lrs: list[list[float]]) -> list[float]:
    assert all(len(set(step)) == 1 for step in lrs)  # no layer decay: every group at the same lr
    return [step[0] for step in lrs]


# ----------------------------------------------------------------------------------------------- schedules
def test_schedule_linear_warmup_steps_then_cosine(tmp_path):
    lrs, _ = fit(task(schedule="cosine", warmup_steps=2), tmp_path, loader(4), epochs=2)
    # 8 steps; warm-up from 1e-3: 1e-3 + (1 - 1e-3) * step / 2; then 0.5 * (1 + cos(pi * (step - 2) / 6))
    expected = [0.001, 0.5005, 1.0, 0.9330127, 0.75, 0.5, 0.25, 0.0669873]
    assert first_group(lrs) == pytest.approx([BASE_LR * f for f in expected], rel=1e-6)


def test_schedule_warmup_epochs_with_accumulation(tmp_path):
    # 4 batches an epoch, 2 accumulated: 2 optimizer steps an epoch, 3 epochs = 6 steps; warm-up 1 epoch = 2 steps
    lrs, _ = fit(task(schedule="cosine", warmup_epochs=1), tmp_path, loader(4), epochs=3, accumulate=2)
    expected = [0.001, 0.5005, 1.0, 0.8535534, 0.5, 0.1464466]  # cos steps at (step - 2) / 4 of the way
    assert first_group(lrs) == pytest.approx([BASE_LR * f for f in expected], rel=1e-6)


def test_schedule_poly_power_and_min_lr_ratio(tmp_path):
    lrs, _ = fit(task(schedule="poly", poly_power=2.0, min_lr_ratio=0.1), tmp_path, loader(5), epochs=1)
    # 0.1 + 0.9 * (1 - step / 5) ** 2 for steps 0..4
    expected = [1.0, 0.676, 0.424, 0.244, 0.136]
    assert first_group(lrs) == pytest.approx([BASE_LR * f for f in expected], rel=1e-6)


def test_schedule_cosine_ends_at_min_lr_ratio(tmp_path):
    lrs, _ = fit(task(schedule="cosine", min_lr_ratio=0.2), tmp_path, loader(3), epochs=1)
    # 0.2 + 0.8 * 0.5 * (1 + cos(pi * step / 3)) for steps 0..2
    assert first_group(lrs) == pytest.approx([BASE_LR * f for f in (1.0, 0.8, 0.4)], rel=1e-6)


def test_schedule_step_milestones_in_epochs(tmp_path):
    lrs, _ = fit(task(schedule="step", milestones=[1, 2], gamma=0.1), tmp_path, loader(2), epochs=3)
    # 2 steps an epoch: x0.1 from step 2 (epoch 1) and again from step 4 (epoch 2)
    assert first_group(lrs) == pytest.approx([BASE_LR * f for f in (1, 1, 0.1, 0.1, 0.01, 0.01)], rel=1e-6)


def test_schedule_step_milestones_with_an_uneven_accumulation(tmp_path):
    # 5 batches an epoch, 2 accumulated: Lightning steps after batches 2, 4 and 5 = 3 steps an epoch, so the
    # milestone at epoch 1 is step 3 (not 2)
    lrs, _ = fit(task(schedule="step", milestones=[1], gamma=0.5), tmp_path, loader(5), epochs=2, accumulate=2)
    assert first_group(lrs) == pytest.approx([BASE_LR * f for f in (1, 1, 1, 0.5, 0.5, 0.5)], rel=1e-6)


# ---------------------------------------------------------------------------------------------- layer decay
def lr_by_parameter(model: ClassificationTask, trainer: Trainer) -> dict[str, float]:
    names = {id(p): name for name, p in model.model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}


def test_layer_decay_focalnet_groups(tmp_path):
    model = task(layer_decay=0.5, schedule="constant")
    _, trainer = fit(model, tmp_path, loader(1), max_steps=1)
    lr = lr_by_parameter(model, trainer)
    # depth from the top (timm's grouping): patch_embed 5, layers.0's block 4, layers.0.downsample with layers.1's
    # block 3, layers.3's block and the final norm 1 (the final norm joins the last block), the head 0
    assert lr["patch_embed.proj.weight"] == pytest.approx(BASE_LR * 0.5**5)
    assert lr["layers.0.blocks.0.modulation.f.weight"] == pytest.approx(BASE_LR * 0.5**4)
    assert lr["layers.0.downsample.proj.weight"] == lr["layers.1.blocks.0.mlp.fc1.weight"]
    assert lr["layers.1.blocks.0.mlp.fc1.weight"] == pytest.approx(BASE_LR * 0.5**3)
    assert lr["layers.3.blocks.0.mlp.fc2.bias"] == pytest.approx(BASE_LR * 0.5)
    assert lr["norm.weight"] == pytest.approx(BASE_LR * 0.5)
    assert lr["head.weight"] == pytest.approx(BASE_LR)


def test_layer_decay_timm_groups(tmp_path):
    model = task("resnet18", layer_decay=0.5, schedule="constant")
    _, trainer = fit(model, tmp_path, loader(1), max_steps=1)
    lr = lr_by_parameter(model, trainer)
    # resnet18: stem (conv1, bn1) 9 from the top, then layer1.0 .. layer4.1 (8 .. 1), the classifier 0
    assert lr["conv1.weight"] == pytest.approx(BASE_LR * 0.5**9)
    assert lr["layer1.0.conv1.weight"] == pytest.approx(BASE_LR * 0.5**8)
    assert lr["layer3.1.bn2.weight"] == pytest.approx(BASE_LR * 0.5**3)
    assert lr["layer4.1.conv2.weight"] == pytest.approx(BASE_LR * 0.5)
    assert lr["fc.weight"] == pytest.approx(BASE_LR)


# ---------------------------------------------------------------------------------------------- streaming
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def class_folders(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.integers(0, 60, (32, 32, 3)) + colour, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    """train/ (4 images a class) and val/ (1 a class) class folders."""
    class_folders(tmp_path / "images" / "train", 4, seed=0)
    class_folders(tmp_path / "images" / "val", 1, seed=1)
    return tmp_path / "images"


def streamed(root: Path | str, **kwargs) -> ClassificationDataModule:
    kwargs = {"batch_size": 3, "num_workers": 0, "image_size": 32, "augment": False, "streaming": True, **kwargs}
    return ClassificationDataModule(root=str(root), **kwargs)


def mean_loss(model: ClassificationTask, data: ClassificationDataModule) -> float:
    """Mean cross-entropy over the training images, read in order (no randomness)."""
    model.eval()
    with torch.no_grad():
        losses = [
            torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"], reduction="sum")
            for batch in DataLoader(data.train_set, batch_size=12)
        ]
    return float(sum(losses)) / 12


def test_streamed_run_uses_the_scheduled_lr_and_learns(folder, tmp_path):
    """12 streamed images (the size is known from the folder's files), batch 3: 4 steps an epoch, 3 epochs = 12
    steps with 2 of warm-up; the lr after warm-up follows the cosine (it was 0: total steps came out as -1)."""
    data = streamed(folder)
    model = task(schedule="cosine", warmup_steps=2, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    data.setup("fit")
    before = mean_loss(model, data)
    lrs, trainer = fit(model, tmp_path, data, epochs=3)
    assert trainer.estimated_stepping_batches == 12 and trainer.num_training_batches == 4
    expected = [1e-3 + (1 - 1e-3) * s / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 10)) for s in range(12)]
    assert first_group(lrs) == pytest.approx([1e-2 * f for f in expected], rel=1e-6)
    assert min(first_group(lrs)[2:]) > 1e-4
    assert mean_loss(model, data) < 0.5 * before  # the colours are learnt


def test_streamed_saved_dataset_knows_its_size(folder, tmp_path):
    datasets.load_dataset("imagefolder", data_dir=str(folder)).save_to_disk(str(tmp_path / "saved"))
    data = streamed(tmp_path / "saved")
    lrs, trainer = fit(task(schedule="step", milestones=[1], gamma=0.5), tmp_path, data, epochs=2)
    assert trainer.num_training_batches == 4  # 12 rows, batch 3
    assert first_group(lrs) == pytest.approx([BASE_LR * f for f in (1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5)], rel=1e-6)


def unsized_stream(folder: Path) -> ClassificationDataModule:
    """A stream whose size is not known before reading it (as a hub data set without split sizes in its card)."""
    data = streamed(folder)
    data.__dict__["_source"] = datasets.load_dataset("imagefolder", data_dir=str(folder), streaming=True)
    assert data._source["train"].info.splits is None
    return data


def test_streamed_data_of_unknown_size_needs_max_steps(folder, tmp_path):
    with pytest.raises(ConfigError, match=r"^the training data's size is unknown .*set trainer\.max_steps"):
        fit(task(), tmp_path, unsized_stream(folder), epochs=2)
    lrs, _ = fit(task(schedule="poly", warmup_steps=1), tmp_path, unsized_stream(folder), max_steps=4)
    assert first_group(lrs) == pytest.approx([BASE_LR * f for f in (1e-3, 1.0, 2 / 3, 1 / 3)], rel=1e-6)
    with pytest.raises(ConfigError, match=r"model\.warmup_epochs .*set model\.warmup_steps"):
        fit(task(warmup_epochs=1), tmp_path, unsized_stream(folder), max_steps=4)


# ------------------------------------------------------------------------------ freezing, checkpointing, compile


def fit_config(config: str, *args: str):
    return main(["fit", "--config", config, *args])


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("backbone", ["focalnet_tiny_srf", "resnet18"])
def test_linear_probe_trains_only_the_classifier(backbone, image_folder, tmp_path, tiny_args, monkeypatch):
    # cls_custom.yaml with freeze_backbone: the classifier learns, every other tensor of the model (BatchNorm
    # statistics included) stays bit-identical over two epochs.
    start = {}
    original = ClassificationTask.configure_optimizers

    def remember_start(self):
        start.update(snapshot(self.model))
        return original(self)

    monkeypatch.setattr(ClassificationTask, "configure_optimizers", remember_start)
    cli = fit_config(
        "cls_custom.yaml", "--data.root", str(image_folder), "--model.pretrained", "null", "--model.backbone", backbone,
        "--model.freeze_backbone", "true", "--trainer.max_epochs", "2", "--trainer.precision", "32",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *tiny_args,
    )  # fmt: skip
    model = cli.model.model
    head = {f"{name}.{k}" for name, m in model.named_modules() if m is model.get_classifier() for k in m.state_dict()}
    assert changed(start, model) == head and len(head) == 2  # the classifier's weight and bias, nothing else
    assert cli.trainer.global_step > 0


@pytest.mark.parametrize("backbone", ["focalnet_tiny_lrf", "resnet18"])
def test_frozen_stages_keep_the_stem_and_first_stage(backbone, tmp_path, monkeypatch):
    # demo_seg.yaml (UPerNet) with frozen_stages 1: stem and stage 1 do not move, the later stages and the heads do.
    start = {}
    original = SegmentationTask.configure_optimizers

    def remember_start(self):
        start["backbone"] = snapshot(self.backbone_module())
        start["heads"] = snapshot(torch.nn.ModuleList(self.head_modules()))
        return original(self)

    monkeypatch.setattr(SegmentationTask, "configure_optimizers", remember_start)
    cli = fit_config(
        "demo_seg.yaml", "--model.backbone", backbone, "--model.frozen_stages", "1", "--trainer.max_steps", "3",
        "--trainer.limit_val_batches", "1", "--data.num_workers", "0", "--data.batch_size", "4",
        "--model.decode_channels", "16", "--model.aux_channels", "8",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    backbone_module = cli.model.backbone_module()
    ids = layer_ids(backbone_module, coarse=True)  # 0: stem, 1: first stage, … (parameters only)
    moved = changed(start["backbone"], backbone_module)
    frozen = {n for n, i in ids.items() if i <= 1}
    later = {n for n, i in ids.items() if i > 1}
    assert frozen and not (frozen & moved)
    assert later & moved
    assert changed(start["heads"], torch.nn.ModuleList(cli.model.head_modules()))  # the heads train


@pytest.mark.parametrize("backbone", ["focalnet_tiny_lrf", "resnet18"])
def test_grad_checkpointing_and_layer_decay_reach_any_backbone(backbone):
    task = SegmentationTask(
        backbone=backbone,
        backbone_kwargs={"embed_dim": 8, "depths": [1, 1, 1, 1], "focal_windows": 9},
        num_classes=3,
        decode_channels=16,
        aux_channels=8,
        grad_checkpointing=True,
        layer_decay=0.5,
    )
    body = task.backbone_module()
    inner = getattr(getattr(body, "body", None), "model", body)  # timm's model inside TimmBackbone
    assert getattr(inner, "grad_checkpointing", None) is True or all(s.grad_checkpointing for s in inner.layers)
    from focalbench.tasks.optim import param_groups

    groups = param_groups(body, task.head_modules(), 0.5)
    ids = layer_ids(body)
    top = max(ids.values())
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    for name, p in body.named_parameters():
        assert scale_of[id(p)] == 0.5 ** (top - ids[name]), name  # the stem at 0.5^top, the last blocks at 1
    assert all(scale_of[id(p)] == 1.0 for head in task.head_modules() for p in head.parameters())


@pytest.mark.slow
def test_compile_runs_the_same_model_and_keeps_plain_state_dict_keys():
    torch.manual_seed(0)
    task = ClassificationTask(
        backbone="focalnet_tiny_srf", backbone_kwargs={"embed_dim": 8, "depths": [1, 1, 1, 1]}, num_classes=3,
        compile=True,
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        compiled, eager = task(x), task.model(x)
    assert task.network() is not task.model  # the compiled wrapper runs the steps
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert all("_orig_mod" not in k for k in task.state_dict())  # checkpoints load without torch.compile


def seg_samples(count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, 32, 32, generator=generator)
    masks = torch.randint(0, 3, (count, 32, 32), generator=generator)
    return [{"image": image, "mask": mask} for image, mask in zip(images, masks)]


def test_layer_decay_timm_dense_backbone_groups(tmp_path):
    """A dense task's timm backbone: the stem 8 block-groups below resnet18's last block (layer1.0 .. layer4.1),
    the heads at the full lr (the dense timm backbone's ``group_matcher`` is its timm model's)."""
    model = SegmentationTask(
        backbone="resnet18", num_classes=3, decode_channels=16, aux_channels=8, layer_decay=0.5,
        schedule="constant", optimizer=sgd, drop_path_rate=0.0,
    )  # fmt: skip
    trainer = Trainer(
        accelerator="cpu", max_steps=1, logger=CSVLogger(tmp_path), enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(seg_samples(2), batch_size=2))
    lr = {id(p): g["lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
    backbone = dict(model.backbone_module().named_parameters())
    stem = next(p for name, p in backbone.items() if name.endswith("conv1.weight") and "layer" not in name)
    last_block = next(p for name, p in backbone.items() if name.endswith("layer4.1.conv2.weight"))
    assert lr[id(stem)] == pytest.approx(lr[id(last_block)] * 0.5**8)
    heads = [lr[id(p)] for head in model.head_modules() for p in head.parameters()]
    assert heads and all(v == pytest.approx(BASE_LR) for v in heads)


CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def optimizer_of(config: Path):
    """The optimizer a shipped config builds (class and init_args under ``model.init_args.optimizer``), and whether
    the config clips gradients under mixed precision, where Lightning cannot take a fused optimizer."""
    settings = yaml.safe_load(config.read_text())
    spec, trainer = settings["model"]["init_args"]["optimizer"], settings["trainer"]
    module, name = spec["class_path"].rsplit(".", 1)
    optimizer_class, kwargs = getattr(importlib.import_module(module), name), spec.get("init_args", {})
    clips_mixed = bool(trainer.get("gradient_clip_val")) and "mixed" in str(trainer.get("precision"))
    return lambda params: optimizer_class(params, **kwargs), clips_mixed


@pytest.mark.parametrize(
    "build, clips_mixed",
    [(default_optimizer, False), *map(optimizer_of, CONFIGS)],
    ids=["default", *(c.stem for c in CONFIGS)],
)
def test_optimizers_are_fused_adamw_with_the_reference_update(build, clips_mixed):
    """The task's default and every config's optimizer is the fused AdamW (one kernel per step) unless the config
    clips gradients under mixed precision, and its updates equal PyTorch's reference loop over the parameters with
    the same hyperparameters, decayed and no-decay groups."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(17, 5, generator=generator), torch.randn(5, generator=generator)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    weights = {}
    for kind in ("configured", "reference"):
        params = [p.clone().requires_grad_() for p in start]
        groups = [{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}]
        optimizer = build(groups)
        assert isinstance(optimizer, torch.optim.AdamW)
        if kind == "configured":
            assert bool(optimizer.defaults["fused"]) is not clips_mixed
        else:  # the same hyperparameters through the per-parameter loop
            defaults = {**optimizer.defaults, "fused": False, "foreach": False}
            defaults.pop("decoupled_weight_decay", None)  # AdamW sets it itself
            optimizer = torch.optim.AdamW(groups, **defaults)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        weights[kind] = [p.detach() for p in params]
    for configured, reference, first in zip(weights["configured"], weights["reference"], start):
        assert not torch.equal(configured, first)  # the step moved the weights
        torch.testing.assert_close(configured, reference, rtol=1e-6, atol=1e-7)


def test_a_fused_optimizer_with_clipping_under_mixed_precision_is_a_config_error(tmp_path):
    trainer = Trainer(
        accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0, max_steps=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    model = task(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True))
    with pytest.raises(ConfigError, match=r"^trainer.gradient_clip_val with trainer.precision bf16-mixed: .*"
                       r"set model.optimizer.init_args.fused: false$"):  # fmt: skip
        trainer.fit(model, train_dataloaders=loader(1))
    clipped = task(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, fused=False))
    before = [p.detach().clone() for p in clipped.parameters()]
    Trainer(
        accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0, max_steps=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False,
    ).fit(clipped, train_dataloaders=loader(1))  # fmt: skip
    assert any(not torch.equal(a, b) for a, b in zip(before, clipped.parameters()))  # not fused: it trains


@pytest.mark.parametrize(
    ("precision", "onednn_bf16", "warned"),
    [("bf16-mixed", False, True), ("bf16-mixed", True, False), ("32-true", False, False)],
    ids=["bf16_without_kernels", "bf16_with_kernels", "fp32_without_kernels"],
)
def test_bf16_on_a_cpu_without_bf16_kernels_warns_once(precision, onednn_bf16, warned, tmp_path, monkeypatch):
    monkeypatch.setattr(fused, "ONEDNN_BF16", onednn_bf16)  # an AVX2-only CPU, or one with AVX-512 / AMX
    trainer = Trainer(
        accelerator="cpu", precision=precision, max_steps=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False,
    )  # fmt: skip
    model = task()
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train_dataloaders=loader(1))
    messages = [str(w.message) for w in caught if "bf16" in str(w.message)]
    expected = (
        "trainer.precision bf16-mixed on a CPU without bf16 kernels (oneDNN's need AVX-512 or AVX-NE-CONVERT): "
        "convolutions and matrix products run on reference kernels many times slower than fp32's; set "
        "trainer.precision: 32-true"
    )
    assert messages == ([expected] if warned else [])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # a warning, not a stop


class ValidationLogits(Callback):
    """The logits of every validation batch, in order."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.logits.append(outputs.detach().clone())


@pytest.mark.parametrize("fused", [True, False], ids=["fused_adamw", "foreach_adamw"])
def test_each_validation_computes_with_the_weights_trained_so_far(fused, tmp_path):
    """Three epochs, each validated: every validation's logits are the plain forward of the weights at that point.
    Lightning switches back to training by setting ``training`` (no ``train()`` call), and fused AdamW updates the
    weights without bumping their version counters: the fused inference path's packed weights from the first
    validation served the later ones (the demo recipes validated every epoch with the first epoch's weights)."""
    torch.manual_seed(0)
    model = task(optimizer=lambda params: torch.optim.AdamW(params, lr=0.05, fused=fused))
    record, val = ValidationLogits(), DataLoader(samples(2, seed=1), batch_size=2)
    snapshots = []

    class Snapshot(Callback):
        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            snapshots.append(copy.deepcopy(pl_module.model).eval())

    trainer = Trainer(
        accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[Snapshot(), record],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=loader(4), val_dataloaders=val)
    images = next(iter(val))["image"]
    assert len(record.logits) == len(snapshots) == 3
    for logits, weights in zip(record.logits, snapshots):
        weights.set_fused_inference(False)
        with torch.no_grad():
            torch.testing.assert_close(logits, weights(images), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(record.logits[0], record.logits[-1])  # the weights did move between validations
