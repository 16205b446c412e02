"""Classification from the configs, as users run it: fit, transfer learning, predict, TensorBoard output."""

from __future__ import annotations

import csv

import pytest
import torch

from focalbench.cli import main
from focalbench.models import create_model, save_safetensors
from focalbench.tasks.classification import ClassificationTask


def run(*args: str):
    return main(list(args))


def test_imagenet_config_fast_dev_run(image_folder, tmp_path, tiny_args):
    cli = run(
        "fit", "--config", "cls_imagenet1k.yaml", "--data.root", str(image_folder), "--data.dataset", "null",
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "runs"), *tiny_args,
    )  # fmt: skip
    assert cli.model.hparams.num_classes == 3  # linked from the data, not typed in the config
    assert cli.model.class_names == ["blue", "green", "red"]
    assert cli.model.mixup is not None  # the recipe's Mixup/CutMix ran (batch of 4 is even)
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])


def test_custom_config_fine_tunes_from_a_checkpoint(image_folder, tmp_path, tiny_args, caplog):
    # an "ImageNet" checkpoint of the same tiny architecture, 1000 classes, in safetensors
    source = create_model("focalnet_tiny_lrf", num_classes=1000, embed_dim=8, depths=(1, 1, 1, 1))
    weights = save_safetensors(source, tmp_path / "pretrained.safetensors")
    cli = run(
        "fit", "--config", "cls_custom.yaml", "--data.root", str(image_folder), "--model.pretrained", str(weights),
        "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.precision", "32",
        *tiny_args,
    )  # fmt: skip
    assert "classifier head dropped (1000 classes in the file, 3 in the model)" in caplog.text
    model = cli.model.model
    assert model.head.out_features == 3
    checkpoints = list((tmp_path / "runs").rglob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in checkpoints) and any(p.name.startswith("epoch") for p in checkpoints)
    assert cli.trainer.checkpoint_callback.monitor == "val_acc1"
    config = list((tmp_path / "runs").rglob("config.yaml"))
    assert config, "LightningCLI saves the resolved config next to the logs"
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"val/predictions", "val/confusion_matrix", "val/focal_modulation"} <= set(tags["images"])
    assert {"train_loss", "val_acc1", "val_acc5", "val_acc_class/red"} <= set(tags["scalars"])
    assert "lr" in tags["scalars"]  # the base lr, one curve


def test_predict_writes_top_k_csv(image_folder, tmp_path, tiny_args):
    out = tmp_path / "runs"
    cli = run(
        "predict", "--config", "cls_custom.yaml", "--data.root", str(image_folder), "--model.pretrained", "null",
        "--data.predict_root", str(image_folder / "val"), "--trainer.default_root_dir", str(out),
        "--model.top_k", "2", "--trainer.precision", "32", *tiny_args,
    )  # fmt: skip
    written = [cb.path for cb in cli.trainer.callbacks if hasattr(cb, "write_on_epoch_end")][0]
    rows = list(csv.DictReader(open(written)))
    assert len(rows) == 12 and set(rows[0]) == {"path", "label_1", "prob_1", "label_2", "prob_2"}
    for row in rows:
        assert row["label_1"] in {"red", "green", "blue"}
        assert 1.0 >= float(row["prob_1"]) >= float(row["prob_2"]) >= 0.0


def test_ema_and_label_smoothing_without_mixup(image_folder, tmp_path, tiny_args):
    cli = run(
        "fit", "--config", "cls_custom.yaml", "--data.root", str(image_folder), "--model.pretrained", "null",
        "--model.ema_decay", "0.9", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "1",
        "--trainer.precision", "32",
        "--trainer.default_root_dir", str(tmp_path / "runs"), *tiny_args,
    )  # fmt: skip
    ema = cli.model.model_ema
    assert ema is not None and "val_ema_acc1" in cli.trainer.callback_metrics
    # timm's first update copies the weights; later ones average, so after 3 steps the EMA lags the model
    assert not torch.equal(ema.module.head.weight, cli.model.model.head.weight)


def test_layer_decay_groups_and_no_weight_decay_on_norms():
    task = ClassificationTask(
        backbone="focalnet_tiny_srf",
        backbone_kwargs={"embed_dim": 8, "depths": [1, 1, 1, 1]},
        num_classes=3,
        layer_decay=0.5,
    )
    from focalbench.tasks.optim import param_groups

    groups = param_groups(task.backbone_module(), task.head_modules(), 0.5)
    by_name = {id(p): n for n, p in task.model.named_parameters()}
    scale_of = {by_name[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {by_name[id(p)]: g.get("weight_decay") for g in groups for p in g["params"]}
    assert scale_of["head.weight"] == 1.0
    assert scale_of["patch_embed.proj.weight"] < scale_of["layers.0.blocks.0.mlp.fc1.weight"]
    assert scale_of["layers.0.blocks.0.mlp.fc1.weight"] < scale_of["layers.3.blocks.0.mlp.fc1.weight"] < 1.0
    assert decay_of["layers.0.blocks.0.norm1.weight"] == 0.0 and decay_of["head.bias"] == 0.0
    assert decay_of["layers.0.blocks.0.mlp.fc1.weight"] is None  # the optimizer's weight_decay applies
    assert len({id(p) for g in groups for p in g["params"]}) == sum(1 for _ in task.model.parameters())


@pytest.mark.slow
def test_resume_from_last_equals_uninterrupted_run(image_folder, tmp_path, tiny_args):
    # Without augmentation the data order (sampler seeded by epoch), optimizer, scheduler and counters decide the
    # result: a run stopped after epoch 1 and resumed from last.ckpt must end where an uninterrupted run ends.
    common = [
        "--config", "cls_custom.yaml", "--data.root", str(image_folder), "--model.pretrained", "null",
        "--model.drop_path_rate", "0", "--data.augment", "false", "--trainer.precision", "32",
        "--trainer.callbacks", "[]", *tiny_args,
    ]  # fmt: skip
    full = run("fit", *common, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path / "a"))
    run("fit", *common, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "b"))
    resumed = run(
        "fit", *common, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path / "b"),
        "--ckpt_path", str(next((tmp_path / "b").rglob("last.ckpt"))),
    )  # fmt: skip
    assert resumed.trainer.global_step == full.trainer.global_step
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_demo_config_runs_on_the_embedded_data(tmp_path):
    cli = run(
        "fit", "--config", "demo_cls.yaml", "--trainer.fast_dev_run", "true", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert cli.datamodule.class_names == ["circle", "square", "star", "triangle"]
    assert cli.model.hparams.num_classes == 4
    assert torch.isfinite(cli.trainer.callback_metrics["val_acc1"])
    assert cli.trainer.optimizers[0].defaults["fused"] is True  # the measured recipe (config header)


@pytest.mark.slow  # 8 of the demo config's 15 epochs (the CI's 30 minutes)
def test_demo_recipe_learns_the_shapes(demo_metric):
    # measured 0.760 after these 8 epochs (the config's 15: 0.940); chance is 0.25
    assert demo_metric("demo_cls.yaml", "val_acc1", "--trainer.max_epochs", "8") > 0.65


def test_streaming_fit(image_folder, tmp_path, tiny_args):
    cli = run(
        "fit", "--config", "cls_custom.yaml", "--data.root", str(image_folder), "--model.pretrained", "null",
        "--data.streaming", "true", "--trainer.max_epochs", "2", "--trainer.precision", "32",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.callbacks", "[]", *tiny_args,
    )  # fmt: skip
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step > 0
    assert cli.trainer.train_dataloader.dataset._epoch == 1  # the shuffle buffer was reseeded for the 2nd epoch
    assert 0.0 <= float(cli.trainer.callback_metrics["val_acc1"]) <= 1.0
