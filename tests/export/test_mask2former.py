"""Exporting Mask2Former: class and mask logits through torch.export and ONNX Runtime, compared with the task's,
and the post-processing the model card names, applied to the exported outputs, giving the task's predictions."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from transformers import Mask2FormerImageProcessor

from focalbench.export import export_task
from focalbench.tasks.mask2former import Mask2FormerTask, instance_inference

CLASSES = ["sky", "road", "car", "person"]


def tiny(mode: str) -> Mask2FormerTask:
    """A Mask2Former of a few thousand parameters (the sizes of tests/tasks/test_mask2former.py), evaluated at the
    image's own size (test_scale None) so the exported 64 × 64 model sees what the task sees."""
    task = Mask2FormerTask(
        mode=mode, backbone="focalnet_tiny_srf", num_classes=len(CLASSES), class_names=CLASSES, test_scale=None,
        backbone_kwargs={"embed_dim": 8, "depths": [1, 1, 1, 1]}, hidden_dim=32, num_queries=6, decoder_layers=2,
        encoder_layers=1, num_attention_heads=2, dim_feedforward=32, encoder_feedforward_dim=32, train_num_points=64,
    ).eval()  # fmt: skip
    task.backbone_module().set_fused_inference(False)
    return task


def datamodule(size: int = 64) -> SimpleNamespace:
    return SimpleNamespace(image_size=size)


def checked_per_image(task, images, class_logits, mask_logits, atol: float) -> Iterator[tuple]:
    """Per image, the exported outputs (as the post-processing takes them) after checking them against the task's
    own ``outputs`` (of ``scaled_input``)."""
    for i, image in enumerate(images):
        got = SimpleNamespace(class_queries_logits=class_logits[i : i + 1], masks_queries_logits=mask_logits[i : i + 1])
        want = task.outputs(task.scaled_input(image))
        torch.testing.assert_close(got.class_queries_logits, want.class_queries_logits, rtol=0, atol=atol)
        torch.testing.assert_close(got.masks_queries_logits, want.masks_queries_logits, rtol=0, atol=atol)
        yield image, got


@pytest.mark.slow  # torch.export of the pixel decoder and transformer decoder: about 30 s on the 2-core CPU
def test_torch_export_and_the_semantic_post_processing_give_the_task_s_prediction(tmp_path, one_thread):
    task = tiny("semantic")
    out = export_task(task, "torch-export", tmp_path / "pt2", datamodule=datamodule())
    program = torch.export.load(out / "model.pt2").module()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # another batch size than 2
    class_logits, mask_logits = program(images)
    assert class_logits.shape == (3, 6, 5) and mask_logits.shape == (3, 6, 64, 64)
    processor = Mask2FormerImageProcessor()
    with torch.no_grad():
        for image, outputs in checked_per_image(task, images, class_logits, mask_logits, atol=1e-5):
            (labels,) = processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 64)])
            assert torch.equal(labels, task.infer([image])[0])
    card = (out / "README.md").read_text()
    assert "dynamic batch, fixed image size" in card and "post_process_semantic_segmentation" in card


@pytest.mark.slow  # the dynamo ONNX exporter on Mask2Former: about 45 s on the 2-core CPU
def test_onnx_instance_mode_normalises_inside_and_matches_the_task(tmp_path, one_thread):
    import onnxruntime

    task = tiny("instance")
    out = export_task(task, "onnx", tmp_path / "onnx", datamodule=datamodule())
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # [0, 1], as detection data
    class_logits, mask_logits = (torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()}))
    with torch.no_grad():
        for image, outputs in checked_per_image(task, images, class_logits, mask_logits, atol=1e-4):
            got, expected = instance_inference(outputs, (64, 64)), task.infer([image])[0]
            assert torch.equal(got["labels"], expected["labels"]) and torch.equal(got["masks"], expected["masks"])
    assert "normalised inside the model" in (out / "README.md").read_text()
