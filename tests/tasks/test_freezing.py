"""Freezing, stage freezing, gradient checkpointing and layer decay behind ``BaseTask``, for FocalNet and timm
backbones: which tensors move over an epoch, which do not, and the lr each parameter gets."""

from __future__ import annotations

import pytest
import torch

from focalbench.cli import main
from focalbench.models.contract import layer_ids
from focalbench.tasks.segmentation import SegmentationTask


def fit(config: str, *args: str):
    return main(["fit", "--config", config, *args])


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("backbone", ["focalnet_tiny_srf", "resnet18"])
def test_linear_probe_trains_only_the_classifier(backbone, image_folder, tmp_path, tiny_args, monkeypatch):
    # cls_custom.yaml with freeze_backbone: the classifier learns, every other tensor of the model (BatchNorm
    # statistics included) stays bit-identical over two epochs.
    from focalbench.tasks.classification import ClassificationTask

    start = {}
    original = ClassificationTask.configure_optimizers

    def remember_start(self):
        start.update(snapshot(self.model))
        return original(self)

    monkeypatch.setattr(ClassificationTask, "configure_optimizers", remember_start)
    cli = fit(
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
    cli = fit(
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
    from focalbench.tasks.classification import ClassificationTask

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
