"""The model card (README.md) written into every export folder, so the artefact explains itself."""

from __future__ import annotations

from focalbench.export.core import ExportJob

_USAGE = {
    "timm": 'import timm\nmodel = timm.create_model("local-dir:{path}", pretrained=True).eval()',
    "huggingface": 'from transformers import {cls}\nmodel = {cls}.from_pretrained("{path}").eval()',
    "onnx": 'import onnxruntime\nsession = onnxruntime.InferenceSession("{path}/model.onnx")',
    "torch-export": 'import torch\nmodel = torch.export.load("{path}/model.pt2").module()',
}
MAX_CLASSES_LISTED = 50


def model_card(job: ExportJob, fmt: str) -> str:
    hp = job.task.hparams
    names = job.class_names
    listed = ", ".join(names[:MAX_CLASSES_LISTED]) + (
        f" … ({len(names)} in all)" if len(names) > MAX_CLASSES_LISTED else ""
    )
    lines = [
        f"# {hp.backbone} {job.kind} ({fmt})",
        "",
        f"Exported by focalbench from {job.checkpoint.get('path') or 'the config (no checkpoint)'}.",
        "",
        f"- Task: {job.kind} ({type(job.task).__name__})",
        f"- Backbone: {hp.backbone}" + (f", overrides {dict(hp.backbone_kwargs)}" if hp.backbone_kwargs else ""),
        f"- Classes ({len(names)}): {listed}",
    ]
    ckpt = job.checkpoint
    if ckpt.get("best_score") is not None:
        lines.append(f"- Best {ckpt['monitor']}: {ckpt['best_score']:.4f} (ModelCheckpoint, {ckpt['best_path']})")
    if ckpt.get("epoch") is not None:
        lines.append(f"- Trained for {ckpt['epoch'] + 1} epochs, {ckpt['global_step']} optimizer steps")
    prep = job.preprocessing
    lines += ["", "## Preprocessing", ""]
    if job.kind == "detection":
        lines.append(f"- Input: {prep['input']}")
        lines.append(
            f"- Inside the model: shorter side to {prep['min_size']} (longer at most {prep['max_size']}), "
            f"normalised with mean {prep['mean']} and std {prep['std']}"
        )
    else:
        lines.append(f"- RGB scaled to [0, 1], normalised with mean {prep['mean']} and std {prep['std']}")
        lines.append(
            f"- Input size {prep['input_size'][1]}×{prep['input_size'][2]}, {prep['interpolation']} resize"
            + (f", centre crop {prep['crop_pct']}" if "crop_pct" in prep else "")
        )
    lines += ["", "## Files and checks", ""]
    lines += [f"- `{name}`" for name in job.files]
    lines += [f"- {note}" for note in job.notes]
    cls = "FocalNetForImageClassification" if job.kind == "classification" else "FocalNetModel"
    lines += ["", "## Use", "", "```python", _USAGE[fmt].format(path=job.output, cls=cls), "```", ""]
    return "\n".join(lines)
