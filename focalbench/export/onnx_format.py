"""``onnx``: ``model.onnx`` checked under ONNX Runtime against PyTorch's outputs (tolerance 1e-4).

Classifiers, UPerNet, Mask2Former and DINO go through torch's dynamo exporter, as dynamic as still reproduces
PyTorch (a UPerNet with symbolic height and width exports, but its adaptive pooling then computes something else
under ONNX Runtime, so its image size is fixed and the card says so; Mask2Former and DINO fix what torch.export
fixes, see :func:`~focalbench.export.torch_export.shape_attempts`). Deformable attention is ``grid_sample``
(ONNX ``GridSample``); the Hungarian matchers are on the training path only. torchvision's Mask R-CNN / Faster
R-CNN go through the TorchScript exporter, which torchvision supports for its detectors: one image of any height
and width per call."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from focalbench.export.core import PIXEL_RTOL, SINGLE_IMAGE, ExportError, ExportJob, check_close, example_images
from focalbench.export.networks import exportable, input_name, output_names
from focalbench.export.torch_export import Shapes, as_tuple, check_inputs, first_that_exports, shapes_of

TOLERANCE = 1e-4
OPSET = 18  # the dynamo exporter's lowest; torchvision's detector ops have symbolics for it too


def _session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check(job: ExportJob, net: torch.nn.Module, path: Path, shapes: Shapes) -> str:
    """Run the written file under ONNX Runtime on the example inputs and compare with PyTorch; the card's note."""
    session = _session(path)
    name = session.get_inputs()[0].name
    inputs = check_inputs(job, shapes)
    worst, rtol = 0.0, PIXEL_RTOL if job.kind in SINGLE_IMAGE else 0.0
    for x in inputs:
        got = [torch.from_numpy(a) for a in session.run(None, {name: x.numpy()})]
        worst = max(worst, check_close("ONNX Runtime", got, as_tuple(net(x)), TOLERANCE, rtol))
    names = ", ".join(output_names(job.kind, job.task))
    return (
        f"ONNX ({shapes.label}; input {name}, outputs {names}); under ONNX Runtime within {worst:.1e} of "
        f"PyTorch's outputs on inputs {shapes_of(inputs)}"
    )


def _export_dynamo(job: ExportJob, net: torch.nn.Module, path: Path) -> str:
    example = example_images(job.kind, job.preprocessing)[0]
    # onnxscript's graph optimizer (0.7) leaves DINO's graph referring to a value it removed ("Node input
    # 'sigmoid_min_1' is not a graph input"); unoptimised, ONNX Runtime optimises it itself when loading.
    optimize = job.kind != "dino"

    def export_and_check(shapes: Shapes) -> str:
        torch.onnx.export(
            net, (example,), str(path), dynamo=True, dynamic_shapes=shapes.dynamic_shapes,
            input_names=[input_name(job.kind)], output_names=output_names(job.kind, job.task), opset_version=OPSET,
            optimize=optimize, verbose=False,
        )  # fmt: skip
        return _check(job, net, path, shapes)

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
    return _check(job, net, path, Shapes("one image, dynamic height and width", None, "size"))


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
    job.notes.append((_export_detector if job.kind == "detection" else _export_dynamo)(job, net, path))
    job.files.append(path.name)
