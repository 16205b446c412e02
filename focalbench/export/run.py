"""``export_task``: load a trained task's checkpoint, write one format, check it, write the model card."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from focalbench.export.card import model_card
from focalbench.export.core import KINDS, ExportError, ExportJob, plain_inference, preprocessing, task_kind
from focalbench.export.hf_format import export_huggingface
from focalbench.export.onnx_format import export_onnx
from focalbench.export.timm_format import export_timm
from focalbench.export.torch_export import export_torch

# format -> (writer, the kinds of task it serves); huggingface writes a dense task's FocalNet backbone
FORMATS: dict[str, tuple[Callable[[ExportJob], None], tuple[str, ...]]] = {
    "timm": (export_timm, ("classification",)),
    "huggingface": (export_huggingface, tuple(KINDS)),
    "onnx": (export_onnx, tuple(KINDS)),
    "torch-export": (export_torch, tuple(KINDS)),
}


def checkpoint_summary(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The task's state dict and what the card reports from a Lightning checkpoint (best score, epoch, step)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"checkpoint '{path}' does not exist") from None
    except Exception as err:
        raise ExportError(f"cannot read '{path}' as a Lightning checkpoint (weights_only=True): {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ExportError(f"'{path}' is not a Lightning checkpoint (no 'state_dict'); use model.pretrained for weights")
    summary = {"path": str(path), "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            summary.update(
                monitor=state.get("monitor"),
                best_score=float(state["best_model_score"]),
                best_path=Path(state.get("best_model_path") or "").name,
            )
            break
    return ckpt["state_dict"], summary


def export_task(
    task: nn.Module,
    fmt: str,
    output: str | os.PathLike,
    ckpt_path: str | os.PathLike | None = None,
    datamodule: object | None = None,
) -> Path:
    """Write ``task`` (weights from ``ckpt_path`` when given) to ``output`` (a folder) in format ``fmt``, check
    the written model against the task's own outputs, and add a model card; returns the folder."""
    kind = task_kind(task)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    writer, kinds = FORMATS[fmt]
    if kind not in kinds:
        raise ExportError(
            f"the {fmt} format takes {' and '.join(kinds)} models, not {kind}; "
            f"export a {kind} model with --format {' or '.join(f for f, (_, k) in FORMATS.items() if kind in k)}"
        )
    summary: dict = {}
    if ckpt_path is not None:
        state, summary = checkpoint_summary(ckpt_path)
        task.load_state_dict(state)
    job = ExportJob(task, kind, Path(output), preprocessing(task, kind, datamodule), summary)
    job.output.mkdir(parents=True, exist_ok=True)
    with plain_inference(task.cpu()), torch.no_grad():
        writer(job)
    (job.output / "README.md").write_text(model_card(job, fmt))
    print(f"exported {kind} model ({task.hparams.backbone}) as {fmt} to {job.output}: {'; '.join(job.notes)}")
    return job.output
