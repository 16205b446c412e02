"""``torch-export``: an ``ExportedProgram`` (``torch.export.export``) saved as ``model.pt2``, re-loaded and compared."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.export import Dim

from focalbench.export.core import PIXEL_RTOL, SINGLE_IMAGE, ExportError, ExportJob, check_close, example_images
from focalbench.export.networks import exportable
from focalbench.export.traceable import traceable_detector

TOLERANCE = 1e-5
FULLY_DYNAMIC = "dynamic batch, height and width (multiples of 32)"


@dataclass(frozen=True)
class Shapes:
    """One way to export: what the card calls it, torch.export's ``dynamic_shapes``, and what the check inputs
    vary (``size``: batch and image size, ``batch``: the batch at a fixed size, ``none``: the content only)."""

    label: str
    dynamic_shapes: Any
    varies: Literal["size", "batch", "none"]


def shape_attempts(kind: str) -> list[Shapes]:
    """The ``dynamic_shapes`` to try, most dynamic first: batch, height and width (multiples of 32, so every
    stride-2 step halves exactly and the pad-to-stride branches are decided at export time), then the batch only.

    Fixed where the model itself fixes it: the detectors (Mask R-CNN, DINO) resize inside the model to a size
    computed from the input's, and torch.export specialises that size to the example's; Mask2Former's pixel
    decoder (transformers) builds its ``spatial_shapes`` tensor from the feature sizes, which specialises them."""
    if kind in SINGLE_IMAGE:
        return [Shapes("one image of a fixed size", None, "none")]
    batch_only = Shapes("dynamic batch, fixed image size", ({0: Dim("batch", min=1, max=4096)},), "batch")
    if kind == "mask2former":
        return [batch_only]
    size = {2: 32 * Dim("height_32", min=1, max=256), 3: 32 * Dim("width_32", min=1, max=256)}
    return [Shapes(FULLY_DYNAMIC, ({0: Dim("batch", min=1, max=4096), **size},), "size"), batch_only]


def first_that_exports(job: ExportJob, export_and_check: Callable[[Shapes], str], what: str) -> str:
    """``export_and_check(shapes)`` for the first of :func:`shape_attempts` that exports and reproduces PyTorch's
    outputs (a more dynamic graph can export and still compute something else: UPerNet's adaptive pooling under
    ONNX); returns its note for the card. A failure of the last attempt is the error."""
    error: Exception | None = None
    skipped = []
    for shapes in shape_attempts(job.kind):
        try:
            note = export_and_check(shapes)
        except Exception as err:  # try the next, less dynamic one; the last error is reported
            error = err
            skipped.append(f"{shapes.label}: {_first_line(err)}")
            continue
        return note + "".join(f" (not {s})" for s in skipped)
    if isinstance(error, ExportError):
        raise error
    raise ExportError(f"{what} cannot export the {job.kind} model: {_first_line(error)}")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def check_inputs(job: ExportJob, shapes: Shapes) -> list[torch.Tensor]:
    """Two inputs an export is checked on: the example and one that differs as far as the export allows (another
    batch and size, another batch size, or other pixels)."""
    first, second = example_images(job.kind, job.preprocessing)
    if shapes.varies == "size":
        return [first, second]
    shape = (second.shape[0], *first.shape[1:]) if shapes.varies == "batch" else first.shape
    draw = torch.rand if job.kind in SINGLE_IMAGE else torch.randn
    return [first, draw(shape, generator=torch.Generator().manual_seed(1))]


def as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def shapes_of(inputs: list[torch.Tensor]) -> str:
    return ", ".join("×".join(map(str, x.shape)) for x in inputs)


def export_torch(job: ExportJob) -> None:
    net = exportable(job.task, job.kind)
    example = example_images(job.kind, job.preprocessing)[0]
    path = job.output / "model.pt2"
    # torchvision's detector asks Python for its box counts in three places: traceable versions while exporting
    tracing = traceable_detector if job.kind == "detection" else nullcontext

    def export_and_check(shapes: Shapes) -> str:
        with tracing():
            program = torch.export.export(net, (example,), dynamic_shapes=shapes.dynamic_shapes, strict=False)
        torch.export.save(program, path)
        loaded = torch.export.load(path).module()
        inputs = check_inputs(job, shapes)
        worst, rtol = 0.0, PIXEL_RTOL if job.kind in SINGLE_IMAGE else 0.0
        for x in inputs:
            worst = max(worst, check_close("torch.export.load", as_tuple(loaded(x)), as_tuple(net(x)), TOLERANCE, rtol))
        return (
            f"torch.export ({shapes.label}); re-loaded with torch.export.load, outputs within {worst:.1e} of "
            f"PyTorch's on inputs {shapes_of(inputs)}"
        )

    job.notes.append(first_that_exports(job, export_and_check, "torch.export"))
    job.files.append(path.name)
