"""Exporting a trained Mask R-CNN: ONNX (torchvision's TorchScript path) under ONNX Runtime; torch.export refuses."""

from __future__ import annotations

import pytest
import torch

from focalbench.tasks.detection import DetectionTask

CONFIG = "demo_det.yaml"


def test_onnx_detector_matches_pytorch_on_images_of_other_sizes(checkpoint, run_export, tmp_path, one_thread):
    import onnxruntime

    out = run_export(CONFIG, checkpoint, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores", "masks"]
    task = DetectionTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    task.backbone_module().set_fused_inference(False)
    generator = torch.Generator().manual_seed(3)
    for height, width in ((64, 64), (48, 80)):
        image = torch.rand(3, height, width, generator=generator)
        boxes, labels, scores, masks = (torch.from_numpy(a) for a in session.run(None, {"image": image.numpy()}))
        with torch.no_grad():
            (want,) = task([image])
        assert len(boxes) == len(want["boxes"]) > 0  # box_score_thresh 0: the untrained head still detects
        assert masks.shape[-2:] == (height, width)
        torch.testing.assert_close(labels, want["labels"])
        for got, key in ((boxes, "boxes"), (scores, "scores"), (masks, "masks")):
            torch.testing.assert_close(got, want[key], rtol=0, atol=1e-4)


def test_torch_export_refuses_the_detector_in_one_line(checkpoint, run_export, tmp_path):
    message = "^error: torch.export cannot export the detection model: .*--format onnx"
    with pytest.raises(SystemExit, match=message) as err:
        run_export(CONFIG, checkpoint, "torch-export", tmp_path / "pt2")
    assert "\n" not in str(err.value)
