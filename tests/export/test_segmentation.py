"""Exporting a trained UPerNet: torch.export and ONNX compared with the task's logits; the backbone to transformers."""

from __future__ import annotations

import pytest
import torch

from focalbench.tasks.segmentation import SegmentationTask

CONFIG = "demo_seg.yaml"


def trained(ckpt) -> SegmentationTask:
    task = SegmentationTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    task.model.backbone.set_fused_inference(False)
    return task


def images(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.slow  # torch.export of UPerNet with symbolic sizes: about 35 s on the 2-core CPU
def test_torch_export_reloads_with_dynamic_batch_and_size(checkpoint, run_export, tmp_path, one_thread):
    out = run_export(CONFIG, checkpoint, "torch-export", tmp_path / "pt2")
    program = torch.export.load(out / "model.pt2").module()
    task = trained(checkpoint)
    with torch.no_grad():
        for x in (images(2, 3, 64, 64), images(3, 3, 128, 96)):
            logits = program(x)
            assert logits.shape == (len(x), 5, *x.shape[2:])  # 5 demo classes, at the input's size
            torch.testing.assert_close(logits, task(x), rtol=0, atol=1e-5)


@pytest.mark.slow  # two ONNX exports (the fully dynamic one is rejected by the check): about a minute
def test_onnx_fixes_the_image_size_it_cannot_reproduce_dynamically(checkpoint, run_export, tmp_path, one_thread):
    import onnxruntime

    out = run_export(CONFIG, checkpoint, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    task = trained(checkpoint)
    x = images(3, 3, 64, 64)  # another batch size than the example's 2
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), task(x), rtol=0, atol=1e-4)
    assert "dynamic batch, fixed image size" in (out / "README.md").read_text()


def test_huggingface_backbone_gives_the_stage_outputs(checkpoint, run_export, tmp_path, one_thread):
    from safetensors.torch import load_file
    from transformers import FocalNetModel

    out = run_export(CONFIG, checkpoint, "huggingface", tmp_path / "hf")
    model = FocalNetModel.from_pretrained(out).eval()
    backbone = trained(checkpoint).model.backbone
    norms = load_file(out / "dense_norms.safetensors")
    assert sorted(norms) == [f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        hidden, dims = model.embeddings(x)
        stage = model.encoder.stages[0]
        _, before, _ = stage(hidden, dims)
        first = before.transpose(1, 2).reshape(2, -1, *dims)  # stage 1 output before downsampling, NCHW
        torch.testing.assert_close(first, backbone.forward_stages(x)[0], rtol=0, atol=1e-4)
        # with the saved norm0 it is the dense backbone's first feature map
        normed = torch.nn.functional.layer_norm(first.permute(0, 2, 3, 1), (8,), norms["norm0.weight"],
                                                norms["norm0.bias"], eps=1e-5).permute(0, 3, 1, 2)  # fmt: skip
        torch.testing.assert_close(normed, backbone(x)[0], rtol=0, atol=1e-4)


def test_timm_format_refuses_a_segmentation_model_in_one_line(checkpoint, run_export, tmp_path):
    message = "^error: the timm format takes classification models, not segmentation"
    with pytest.raises(SystemExit, match=message) as err:
        run_export(CONFIG, checkpoint, "timm", tmp_path / "timm")
    assert "\n" not in str(err.value) and "--format huggingface or onnx or torch-export" in str(err.value)
