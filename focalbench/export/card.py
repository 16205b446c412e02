"""The model card (README.md) written into every export folder, so the artefact explains itself."""

from __future__ import annotations

from focalbench.export.core import SINGLE_IMAGE, ExportJob

_USAGE = {
    "timm": 'import timm\n{imports}model = timm.create_model("local-dir:{path}", pretrained=True).eval()',
    "huggingface": 'from transformers import {cls}\nmodel = {cls}.from_pretrained("{path}").eval()',
    "onnx": 'import onnxruntime\nsession = onnxruntime.InferenceSession("{path}/model.onnx")',
    "torch-export": 'import torch\nmodel = torch.export.load("{path}/model.pt2").module()',
}
MAX_CLASSES_LISTED = 50
# Mask2Former's outputs (class_logits, mask_logits) -> the prediction of each mode, as focalbench's evaluation
# computes it (``outputs = SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)``,
# one image, ``(h, w)`` its size).
_MASK2FORMER_POST = {
    "semantic": "Mask2FormerImageProcessor().post_process_semantic_segmentation(outputs, target_sizes=[(h, w)])[0]",
    "panoptic": (
        "Mask2FormerImageProcessor().post_process_panoptic_segmentation(outputs, threshold={object_mask_threshold}, "
        "overlap_mask_area_threshold={overlap_threshold}, label_ids_to_fuse={stuff}, target_sizes=[(h, w)])[0]"
    ),
    "instance": (
        "focalbench.tasks.mask2former.instance_inference(outputs, (h, w), {instance_score_threshold}) "
        "(masks, boxes, scores, labels 1..K)"
    ),
}


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
    if job.kind in SINGLE_IMAGE:
        lines.append(f"- Input: {prep['input']}")
        lines.append(
            f"- Inside the model: shorter side to {prep['min_size']} (longer at most {prep['max_size']}), "
            f"normalised with mean {prep['mean']} and std {prep['std']}"
        )
    elif job.kind == "mask2former":
        where = "inside the model" if prep["normalised_inside"] else "before the model"
        lines.append(f"- RGB scaled to [0, 1], normalised {where} with mean {prep['mean']} and std {prep['std']}")
        if prep["test_scale"] is not None:
            long, short = prep["test_scale"]
            lines.append(f"- focalbench's evaluation rescales each image into {long}×{short} (long × short side)")
    else:
        lines.append(f"- RGB scaled to [0, 1], normalised with mean {prep['mean']} and std {prep['std']}")
        lines.append(
            f"- Input size {prep['input_size'][1]}×{prep['input_size'][2]}, {prep['interpolation']} resize"
            + (f", centre crop {prep['crop_pct']}" if "crop_pct" in prep else "")
        )
    lines += _outputs(job)
    lines += ["", "## Files and checks", ""]
    lines += [f"- `{name}`" for name in job.files]
    lines += [f"- {note}" for note in job.notes]
    cls = "FocalNetForImageClassification" if job.kind == "classification" else "FocalNetModel"
    usage = _USAGE[fmt].format(path=job.output, cls=cls, imports="".join(f"{line}\n" for line in job.imports))
    lines += ["", "## Use", "", "```python", usage, "```", ""]
    return "\n".join(lines)


def _outputs(job: ExportJob) -> list[str]:
    """What the exported network returns and, where it is not the prediction, how to post-process it."""
    hp = job.task.hparams
    if job.kind == "mask2former":
        post = _MASK2FORMER_POST[hp.mode].format(**hp, stuff=set(job.preprocessing.get("stuff", ())))
        return [
            "",
            "## Outputs",
            "",
            f"- `class_logits` [N, {hp.num_queries}, {hp.num_classes + 1}] (the last class: no object) and "
            f"`mask_logits` [N, {hp.num_queries}, H, W] at the input's size",
            f"- Post-processing ({hp.mode}): `{post}`",
        ]
    if job.kind == "dino":
        return [
            "",
            "## Outputs",
            "",
            f"- The top {hp.num_select} (query, class) pairs by sigmoid score, post-processing included: `boxes` "
            "[S, 4] xyxy in the input's pixels, `scores` [S], `labels` [S] (1..K)",
        ]
    return []
