"""``torch-export``: an ``ExportedProgram`` (``torch.export.export``) saved as ``model.pt2``, re-loaded and compared."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.export import Dim

from focalbench.export.core import ExportError, ExportJob, check_close, example_images
from focalbench.export.networks import exportable

TOLERANCE = 1e-5
FULLY_DYNAMIC = "dynamic batch, height and width (multiples of 32)"


def shape_attempts(kind: str) -> list[tuple[str, Any]]:
    """``dynamic_shapes`` to try, most dynamic first: batch, height and width (multiples of 32, so every stride-2
    step halves exactly and the pad-to-stride branches are decided at export time), then the batch only. The
    detector takes one image: its size is fixed for torch.export."""
    if kind == "detection":
        return [("one image of a fixed size", None)]
    size = {2: 32 * Dim("height_32", min=1, max=256), 3: 32 * Dim("width_32", min=1, max=256)}
    return [
        (FULLY_DYNAMIC, ({0: Dim("batch", min=1, max=4096), **size},)),
        ("dynamic batch, fixed image size", ({0: Dim("batch", min=1, max=4096)},)),
    ]


def first_that_exports(job: ExportJob, export_and_check: Callable[[Any, str], str], what: str) -> str:
    """``export_and_check(dynamic_shapes, label)`` for the first of :func:`shape_attempts` that exports and
    reproduces PyTorch's outputs (a more dynamic graph can export and still compute something else: UPerNet's
    adaptive pooling under ONNX); returns its note for the card. A failure of the last attempt is the error."""
    error: Exception | None = None
    skipped = []
    for label, dynamic_shapes in shape_attempts(job.kind):
        try:
            note = export_and_check(dynamic_shapes, label)
        except Exception as err:  # try the next, less dynamic one; the last error is reported
            error = err
            skipped.append(f"{label}: {_first_line(err)}")
            continue
        return note + "".join(f" (not {s})" for s in skipped)
    if isinstance(error, ExportError):
        raise error
    raise ExportError(f"{what} cannot export the {job.kind} model: {_first_line(error)}")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def check_inputs(job: ExportJob, label: str) -> list[torch.Tensor]:
    """The example inputs an export is checked on: two sizes when its size is dynamic, else the first."""
    inputs = example_images(job.kind, job.preprocessing)
    return inputs if "height" in label else inputs[:1]


def as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def shapes(inputs: list[torch.Tensor]) -> str:
    return ", ".join("×".join(map(str, x.shape)) for x in inputs)


def export_torch(job: ExportJob) -> None:
    net = exportable(job.task, job.kind)
    example = example_images(job.kind, job.preprocessing)[0]
    path = job.output / "model.pt2"

    def export_and_check(dynamic_shapes: Any, label: str) -> str:
        program = torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes, strict=False)
        torch.export.save(program, path)
        loaded = torch.export.load(path).module()
        inputs = check_inputs(job, label)
        worst = 0.0
        for x in inputs:
            worst = max(worst, check_close("torch.export.load", as_tuple(loaded(x)), as_tuple(net(x)), TOLERANCE))
        return (
            f"torch.export ({label}); re-loaded with torch.export.load, outputs within {worst:.1e} of PyTorch's "
            f"on inputs {shapes(inputs)}"
        )

    try:
        job.notes.append(first_that_exports(job, export_and_check, "torch.export"))
    except ExportError as err:
        if job.kind != "detection":
            raise
        raise ExportError(
            f"{err} (torchvision's detector has data-dependent shapes after NMS, which torch.export cannot trace; "
            "--format onnx exports the whole detector)"
        ) from None
    job.files.append(path.name)
