"""``onnx``: ``model.onnx`` checked under ONNX Runtime against PyTorch's outputs (tolerance 1e-4).

Classifiers and UPerNet go through torch's dynamo exporter, as dynamic as still reproduces PyTorch (a UPerNet with
symbolic height and width exports, but its adaptive pooling then computes something else under ONNX Runtime, so
its image size is fixed and the card says so). torchvision's Mask R-CNN / Faster R-CNN go through the TorchScript
exporter, which torchvision supports for its detectors: one image of any height and width per call."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from focalbench.export.core import ExportError, ExportJob, check_close, example_images
from focalbench.export.networks import exportable, output_names
from focalbench.export.torch_export import as_tuple, check_inputs, first_that_exports, shapes

TOLERANCE = 1e-4
OPSET = 18  # the dynamo exporter's lowest; torchvision's detector ops have symbolics for it too


def _session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check(job: ExportJob, net: torch.nn.Module, path: Path, label: str) -> str:
    """Run the written file under ONNX Runtime on the example inputs and compare with PyTorch; the card's note."""
    session = _session(path)
    input_name = session.get_inputs()[0].name
    inputs = check_inputs(job, label)
    worst = 0.0
    for x in inputs:
        got = [torch.from_numpy(a) for a in session.run(None, {input_name: x.numpy()})]
        worst = max(worst, check_close("ONNX Runtime", got, as_tuple(net(x)), TOLERANCE))
    names = ", ".join(output_names(job.kind, job.task))
    return (
        f"ONNX ({label}; input {input_name}, outputs {names}); under ONNX Runtime within {worst:.1e} of PyTorch's "
        f"outputs on inputs {shapes(inputs)}"
    )


def _export_dense(job: ExportJob, net: torch.nn.Module, path: Path) -> str:
    example = example_images(job.kind, job.preprocessing)[0]

    def export_and_check(dynamic_shapes: Any, label: str) -> str:
        torch.onnx.export(
            net, (example,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes, input_names=["images"],
            output_names=output_names(job.kind, job.task), opset_version=OPSET, verbose=False,
        )  # fmt: skip
        return _check(job, net, path, label)

    return first_that_exports(job, export_and_check, "the ONNX exporter")


def _export_detector(job: ExportJob, net: torch.nn.Module, path: Path) -> str:
    example = example_images(job.kind, job.preprocessing)[0]
    names = output_names(job.kind, job.task)
    axes = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript tracer warns about every Python-level shape computation
        torch.onnx.export(
            net, (example,), str(path), dynamo=False, opset_version=OPSET, input_names=["image"],
            output_names=names, dynamic_axes=axes,
        )  # fmt: skip
    net.eval()  # the TorchScript exporter restores the wrapper's mode recursively: put the detector back in eval
    return _check(job, net, path, "one image, dynamic height and width")


def export_onnx(job: ExportJob) -> None:
    try:
        import onnx  # noqa: F401 - the exporters need it
        import onnxruntime  # noqa: F401 - the check needs it
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"the onnx format needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
            "pip install 'focalbench[export]'"
        ) from None
    net = exportable(job.task, job.kind)
    path = job.output / "model.onnx"
    job.notes.append((_export_detector if job.kind == "detection" else _export_dense)(job, net, path))
    job.files.append(path.name)
