"""Exporting a trained classifier: each format re-loaded by its own loader and compared with focalbench's logits."""

from __future__ import annotations

import json

import pytest
import torch

from focalbench.export import ExportError, export_task
from focalbench.tasks.classification import ClassificationTask

CONFIG = "demo_cls.yaml"
CLASSES = ["circle", "square", "star", "triangle"]  # the demo data's


def trained(ckpt) -> ClassificationTask:
    task = ClassificationTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    task.model.set_fused_inference(False)
    return task


def images(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.slow  # torch.export with symbolic batch and size: 25 s alone on the 2-core CPU, a minute in the suite
def test_torch_export_reloads_with_dynamic_batch_and_size(checkpoint, run_export, tmp_path, one_thread):
    out = run_export(CONFIG, checkpoint, "torch-export", tmp_path / "pt2")
    program = torch.export.load(out / "model.pt2").module()
    task = trained(checkpoint)
    for x in (images(2, 3, 64, 64), images(5, 3, 128, 96)):  # a batch and size other than the export's example
        torch.testing.assert_close(program(x), task.model(x), rtol=0, atol=1e-5)


@pytest.mark.slow  # the dynamo ONNX exporter: 25 s alone on the 2-core CPU, a minute in the suite
def test_onnx_runs_under_onnxruntime(checkpoint, run_export, tmp_path, one_thread):
    import onnxruntime

    out = run_export(CONFIG, checkpoint, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    task = trained(checkpoint)
    for x in (images(1, 3, 64, 64), images(4, 3, 96, 160)):
        (logits,) = session.run(None, {"images": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), task.model(x), rtol=0, atol=1e-4)
    card = (out / "README.md").read_text()
    assert "dynamic batch, height and width" in card and "under ONNX Runtime within" in card


def test_huggingface_from_pretrained_with_labels(checkpoint, run_export, tmp_path, one_thread):
    from PIL import Image
    from transformers import AutoImageProcessor, FocalNetForImageClassification

    out = run_export(CONFIG, checkpoint, "huggingface", tmp_path / "hf")
    model = FocalNetForImageClassification.from_pretrained(out).eval()
    assert model.config.id2label == dict(enumerate(CLASSES))
    processor = AutoImageProcessor.from_pretrained(out)  # the evaluation transform: 32 px, crop 1.0, bicubic
    assert (processor.size["shortest_edge"], processor.crop_pct, processor.resample) == (32, 1.0, 3)
    assert processor(Image.new("RGB", (48, 40)), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)
    task = trained(checkpoint)
    x = images(2, 3, 64, 64)
    torch.testing.assert_close(model(pixel_values=x).logits, task.model(x), rtol=0, atol=1e-4)


def test_model_card_reports_the_checkpoint_and_preprocessing(checkpoint, run_export, tmp_path, one_thread):
    out = run_export(CONFIG, checkpoint, "huggingface", tmp_path / "hf")
    card = (out / "README.md").read_text()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    (best,) = [s for k, s in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert f"Best val_acc1: {float(best['best_model_score']):.4f}" in card
    assert "Classes (4): circle, square, star, triangle" in card
    assert "mean (0.485, 0.456, 0.406)" in card and "Input size 32×32, bicubic resize, centre crop 1.0" in card
    assert "- Task: classification" in card and "focalnet_tiny_srf" in card


def test_timm_loads_a_demo_size_no_timm_name_builds(checkpoint, run_export, tmp_path, one_thread):
    """embed_dim 8 and depths [1, 1, 1, 1], which timm's focalnet_* entry points fix: config.json names the entry
    point focalbench registers (timm's FocalNet class, every argument in model_args), and timm's loader builds it."""
    import timm
    from timm.models.focalnet import FocalNet

    out = run_export(CONFIG, checkpoint, "timm", tmp_path / "timm")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "focalbench_focalnet" and config["label_names"] == CLASSES
    assert (config["model_args"]["embed_dim"], config["model_args"]["depths"]) == (8, [1, 1, 1, 1])
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert type(model) is FocalNet
    task = trained(checkpoint)
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), task.model(x), rtol=0, atol=1e-5)
        # without pretrained=True timm builds the architecture with fresh weights, as for hub ids
        fresh = timm.create_model(f"local-dir:{out}").eval()
        assert (fresh(x) - task.model(x)).abs().max() > 1e-3
    assert "import focalbench.export" in (out / "README.md").read_text()


def test_timm_local_dir_loads_a_full_size_focalnet(tmp_path, one_thread):
    """A real architecture (focalnet_tiny_lrf, 28M parameters) with a changed focal window: timm rebuilds it from
    config.json alone (``model_args``; ``pretrained=True`` loads the weights, as from the hub), with the labels
    and the preprocessing."""
    import timm

    task = ClassificationTask(
        backbone="focalnet_tiny_lrf", num_classes=3, class_names=["a", "b", "c"],
        backbone_kwargs={"focal_windows": 5}, drop_path_rate=0.0,
    ).eval()  # fmt: skip
    export_task(task, "timm", tmp_path / "timm")
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == "focalnet_tiny_lrf"
    assert config["model_args"]["focal_windows"] == [5, 5, 5, 5] and config["label_names"] == ["a", "b", "c"]
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    assert config["pretrained_cfg"]["interpolation"] == "bicubic"
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    task.model.set_fused_inference(False)
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), task.model(x), rtol=0, atol=1e-5)


def test_timm_backbone_saved_as_timm_saves_it(tmp_path, one_thread):
    import timm

    task = ClassificationTask(backbone="test_resnet", num_classes=3, class_names=["a", "b", "c"]).eval()
    export_task(task, "timm", tmp_path / "timm")
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), task.model(x), rtol=0, atol=1e-5)
    with pytest.raises(ExportError, match="transformers has no model for the timm backbone 'test_resnet'"):
        export_task(task, "huggingface", tmp_path / "hf")
