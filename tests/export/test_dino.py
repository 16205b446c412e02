"""Exporting a trained DINO: the top-k detections (post-processing inside) through torch.export and ONNX Runtime,
compared with the task's own ``detect``; its FocalNet backbone to transformers."""

from __future__ import annotations

import pytest
import torch

from focalbench.export import export_task
from focalbench.tasks.dino import DINOTask

CONFIG = "demo_det_dino.yaml"


def trained(ckpt) -> DINOTask:
    task = DINOTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    task.backbone_module().set_fused_inference(False)
    return task


def assert_detections(got, task: DINOTask, image: torch.Tensor, atol: float) -> None:
    boxes, scores, labels = (torch.as_tensor(a) for a in got)
    with torch.no_grad():
        (want,) = task.detect([image])
    assert boxes.shape == (30, 4)  # num_select of the tiny config
    torch.testing.assert_close(labels, want["labels"])
    torch.testing.assert_close(scores, want["scores"], rtol=0, atol=atol)
    torch.testing.assert_close(boxes, want["boxes"], rtol=0, atol=atol)


@pytest.mark.slow  # a training step, then torch.export of the deformable transformer: about 30 s on the 2-core CPU
def test_torch_export_gives_the_task_s_detections(checkpoint, run_export, tmp_path, one_thread):
    out = run_export(CONFIG, checkpoint, "torch-export", tmp_path / "pt2")
    program = torch.export.load(out / "model.pt2").module()
    task = trained(checkpoint)
    generator = torch.Generator().manual_seed(4)
    for _ in range(2):  # images other than the export's example, at its size (64 × 64)
        image = torch.rand(3, 64, 64, generator=generator)
        assert_detections(program(image), task, image, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "- Task: dino (DINOTask)" in card and "top 30 (query, class) pairs" in card


@pytest.mark.slow  # the dynamo ONNX exporter on the deformable transformer: about 25 s on the 2-core CPU
def test_onnx_runs_under_onnxruntime(checkpoint, run_export, tmp_path, one_thread):
    import onnxruntime

    out = run_export(CONFIG, checkpoint, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]
    task = trained(checkpoint)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(6))
    assert_detections(session.run(None, {"image": image.numpy()}), task, image, atol=1e-4)


def test_huggingface_writes_the_backbone(tmp_path, one_thread):
    from transformers import FocalNetModel

    task = DINOTask(
        backbone="focalnet_tiny_srf", num_classes=2, class_names=["a", "b"], hidden_dim=32, encoder_layers=1,
        decoder_layers=1, ffn_dim=32, num_points=2, num_queries=10, num_dn_queries=0, min_size=64, max_size=64,
        backbone_kwargs={"embed_dim": 8, "depths": [1, 1, 1, 1], "focal_windows": 9},
    )  # fmt: skip
    out = export_task(task, "huggingface", tmp_path / "hf")
    model = FocalNetModel.from_pretrained(out)
    assert (model.config.embed_dim, model.config.depths, model.config.focal_windows) == (8, [1, 1, 1, 1], [9] * 4)
    assert "stage outputs before downsampling within" in (out / "README.md").read_text()
