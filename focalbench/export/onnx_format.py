"""``onnx``: ``model.onnx`` checked under ONNX Runtime against PyTorch's outputs (tolerance 1e-4).

Classifiers and UPerNet go through torch's dynamo exporter with the dynamic shapes torch.export allows (UPerNet's
adaptive pooling pins the image size). torchvision's Mask R-CNN / Faster R-CNN go through the TorchScript exporter
(opset 17), which torchvision supports for its detectors: one image of any height and width per call.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from focalbench.export.core import ExportError, ExportJob, check_close, example_images
from focalbench.export.networks import exportable, output_names
from focalbench.export.torch_export import as_tuple, check_inputs, first_that_exports, shapes

TOLERANCE = 1e-4
OPSET = 17


def _session(path: Path):
    try:
        import onnxruntime
    except ImportError as err:
        raise ExportError(
            "the onnx format needs onnx, onnxscript and onnxruntime: pip install 'focalbench[export]'"
        ) from err
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _export_dense(job: ExportJob, net: torch.nn.Module, path: Path) -> str:
    example = example_images(job.kind, job.preprocessing)[0]
    names = output_names(job.kind, job.task)

    def export(dynamic_shapes):
        torch.onnx.export(
            net, (example,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes, input_names=["images"],
            output_names=names, opset_version=18, verbose=False,
        )  # fmt: skip

    _, label = first_that_exports(job, export, "the ONNX exporter")
    return label


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
    return "one image, dynamic height and width"


def export_onnx(job: ExportJob) -> None:
    try:
        import onnx  # noqa: F401 - the exporters need it
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(
            "the onnx format needs onnx, onnxscript and onnxruntime: pip install 'focalbench[export]'"
        ) from err
    net = exportable(job.task, job.kind)
    path = job.output / "model.onnx"
    label = (_export_detector if job.kind == "detection" else _export_dense)(job, net, path)
    net.eval()  # the TorchScript exporter restores the wrapper's (training) mode, recursively
    session = _session(path)
    input_name = session.get_inputs()[0].name
    inputs = check_inputs(job, label)
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            got = [torch.from_numpy(a) for a in session.run(None, {input_name: x.numpy()})]
            worst = max(worst, check_close("ONNX Runtime", got, as_tuple(net(x)), TOLERANCE))
    job.files.append(path.name)
    job.notes.append(
        f"ONNX ({label}, input `{input_name}`, outputs {', '.join(output_names(job.kind, job.task))});"
        f" under ONNX Runtime within {worst:.1e} of PyTorch's outputs on inputs {shapes(inputs)}"
    )
