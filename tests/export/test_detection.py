"""Exporting a trained Mask R-CNN: ONNX (torchvision's TorchScript path) under ONNX Runtime, and torch.export of the
whole detector (NMS, RoI pooling and mask pasting inside) re-loaded with ``torch.export.load``."""

from __future__ import annotations

import torch

from focalbench.tasks.detection import DetectionTask

CONFIG = "demo_det.yaml"


def trained(ckpt) -> DetectionTask:
    task = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    task.backbone_module().set_fused_inference(False)
    return task


def test_onnx_detector_matches_pytorch_on_images_of_other_sizes(checkpoint, run_export, tmp_path, one_thread):
    import onnxruntime

    out = run_export(CONFIG, checkpoint, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores", "masks"]
    task = trained(checkpoint)
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


def test_torch_export_gives_the_detections_of_the_trained_detector(checkpoint, run_export, tmp_path, one_thread):
    out = run_export(CONFIG, checkpoint, "torch-export", tmp_path / "pt2")
    program = torch.export.load(out / "model.pt2").module()
    task = trained(checkpoint)
    generator = torch.Generator().manual_seed(5)
    for _ in range(2):  # images other than the export's example, at its size (64 × 64: fixed for torch.export)
        image = torch.rand(3, 64, 64, generator=generator)
        boxes, labels, scores, masks = program(image)
        with torch.no_grad():
            (want,) = task([image])
        assert len(boxes) == len(want["boxes"]) > 0 and masks.shape == (len(boxes), 1, 64, 64)
        torch.testing.assert_close(labels, want["labels"])
        for got, key in ((boxes, "boxes"), (scores, "scores"), (masks, "masks")):
            torch.testing.assert_close(got, want[key], rtol=0, atol=1e-5)
    assert "torch.export (one image of a fixed size)" in (out / "README.md").read_text()
