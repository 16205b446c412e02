"""``timm``: ``model.safetensors`` + ``config.json``, for ``timm.create_model("local-dir:DIR", pretrained=True)``.

A FocalNet classifier is rebuilt as timm's FocalNet of the same architecture (every architecture argument in
``model_args``, so a demo's small ``embed_dim``/``depths`` and the large_fl4 ``normalize_modulator`` travel with
it), filled through :func:`focalbench.models.checkpoint_export.from_focalbench`; a timm classifier is saved as it
is. timm's own ``save_for_hf`` writes both files; the folder is then loaded back with timm and compared (1e-5).
"""

from __future__ import annotations

import re

import timm
import torch
from timm.models import save_for_hf

from focalbench.export.core import ExportError, ExportJob, check_close, example_images
from focalbench.export.networks import focalnet_args, focalnet_trunk
from focalbench.models.checkpoint_export import from_focalbench
from focalbench.models.checkpoints import CheckpointError

TOLERANCE = 1e-5
# Our FocalNet arguments that timm's FocalNet takes under another name (or the same).
_TIMM_ARGS = {
    "embed_dim": "embed_dim",
    "depths": "depths",
    "focal_levels": "focal_levels",
    "focal_windows": "focal_windows",
    "mlp_ratio": "mlp_ratio",
    "use_overlap_embed": "use_overlap_down",
    "use_post_norm": "use_post_norm",
    "use_post_norm_in_modulation": "use_post_norm_in_modulation",
    "normalize_modulator": "normalize_modulator",
    "layerscale_value": "layerscale_value",
}


def timm_focalnet(job: ExportJob) -> torch.nn.Module:
    """timm's FocalNet with the task's architecture and weights."""
    task = job.task
    trunk = focalnet_trunk(task, job.kind)
    args = focalnet_args(task, trunk)
    if args["patch_size"] != 4:
        raise ExportError(
            f"timm's FocalNet has a stride-4 stem; '{task.hparams.backbone}' has patch_size {args['patch_size']}"
        )
    if args["use_overlap_embed"] and args["stem_padding"] != 2:
        raise ExportError(f"timm's FocalNet pads its 7×7 stem by 2; this model pads by {args['stem_padding']}")
    name = task.hparams.backbone
    if name not in timm.list_models("focalnet_*"):
        raise ExportError(f"timm has no FocalNet called '{name}'; export it with --format huggingface or onnx")
    model_args = {theirs: args[ours] for ours, theirs in _TIMM_ARGS.items()}
    fixed = []
    while True:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=trunk.num_classes, **model_args)
            break
        except TypeError as err:
            # timm's entry points fix some arguments (embed_dim, depths …) and reject them as keywords: those are
            # left to the entry point, and the weights below must then fit what it builds.
            found = re.search(r"multiple values for keyword argument '(\w+)'", str(err))
            if found is None or found.group(1) not in model_args:
                raise
            fixed.append(found.group(1))
            model_args.pop(found.group(1))
    try:
        state = from_focalbench(trunk.state_dict(), model.state_dict(), "timm")
    except CheckpointError:
        ours = ", ".join(f"{k}={args[k]}" for k in _TIMM_ARGS if _TIMM_ARGS[k] in fixed)
        raise ExportError(
            f"timm's {name} fixes {', '.join(fixed)} and this model changes them ({ours}), so timm cannot build it "
            "by name; use --format huggingface, onnx or torch-export"
        ) from None
    model.load_state_dict(state)
    return model


def export_timm(job: ExportJob) -> None:
    task = job.task
    model = timm_focalnet(job) if focalnet_trunk(task, job.kind) is not None else task.model
    prep = job.preprocessing
    data_config = {k: prep[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std")}
    save_for_hf(
        model.eval(),
        str(job.output),
        model_config={"label_names": job.class_names},
        safe_serialization=True,
        data_config=data_config,
    )
    loaded = timm.create_model(f"local-dir:{job.output}", pretrained=True).eval()
    inputs = example_images(job.kind, prep)
    with torch.no_grad():
        worst = max(check_close("timm.create_model", [loaded(x)], [task.model(x)], TOLERANCE) for x in inputs)
    job.files += ["model.safetensors", "config.json"]
    job.notes.append(
        f'timm: `timm.create_model("local-dir:{job.output.name}", pretrained=True)` (architecture '
        f"`{model.pretrained_cfg['architecture']}`); its logits within {worst:.1e} of focalbench's"
    )
