"""``timm``: ``model.safetensors`` + ``config.json`` in timm's hub form, for
``timm.create_model("local-dir:DIR", pretrained=True)``.

A FocalNet classifier is rebuilt as timm's ``FocalNet`` of the same architecture and filled through
:func:`focalbench.models.checkpoint_export.from_focalbench`; a timm classifier is saved as it is. timm's own
``save_for_hf`` writes both files; the folder is then loaded back with timm and compared (1e-5). ``config.json``
names the timm entry point that builds the architecture, with its arguments in ``model_args``:

- the registered entry point of the backbone's name (``focalnet_tiny_srf`` …) when it builds this architecture;
  ``model_args`` then holds every argument it does not fix itself (a changed focal window, …);
- otherwise ``focalbench_focalnet``, which this module registers with timm: timm's ``FocalNet`` class with every
  architecture argument from ``model_args``. timm's ``focalnet_*`` entry points fix ``embed_dim`` and ``depths``
  (``dict(depths=..., embed_dim=..., **kwargs)``: either one in ``model_args`` is a "got multiple values" TypeError),
  so a demo's small FocalNet has no timm name; loading it needs ``import focalbench.export`` first.

Weights: timm 1.0 loads a local folder's ``model.safetensors`` only with ``pretrained=True``, as for ``hf-hub:``
ids; without it, ``create_model`` builds the architecture from ``config.json`` with fresh weights. No field of
``config.json`` changes that: ``model_args`` go to the entry point, which already takes ``pretrained`` (a
TypeError), and on to the model class, which takes no ``checkpoint_path``.
"""

from __future__ import annotations

import re

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model, save_for_hf
from timm.models.focalnet import FocalNet, _create_focalnet

from focalbench.export.core import ExportError, ExportJob, check_close, example_images
from focalbench.export.networks import focalnet_args, focalnet_trunk
from focalbench.models.checkpoint_export import from_focalbench
from focalbench.models.checkpoints import CheckpointError

TOLERANCE = 1e-5
ANY_FOCALNET = "focalbench_focalnet"
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

# timm reads an entry point's default configuration from its module's ``default_cfgs`` when it registers it.
default_cfgs = generate_default_cfgs(
    {
        ANY_FOCALNET: {
            "url": "",
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": None,
            "crop_pct": 0.9,
            "interpolation": "bicubic",
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "stem.proj",
            "classifier": "head.fc",
        }
    }
)


@register_model
def focalbench_focalnet(pretrained: bool = False, **kwargs) -> FocalNet:
    """timm's FocalNet with every architecture argument from the caller (``config.json``'s ``model_args``): the
    entry point of focalbench's timm exports whose size no ``focalnet_*`` entry point builds."""
    return _create_focalnet(ANY_FOCALNET, pretrained=pretrained, **kwargs)


def _by_name(name: str, model_args: dict, num_classes: int) -> tuple[torch.nn.Module, list[str]]:
    """timm's entry point ``name`` with ``model_args`` less those it fixes itself; also which it fixes."""
    model_args, fixed = dict(model_args), []
    while True:
        try:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, **model_args), fixed
        except TypeError as err:
            found = re.search(r"multiple values for keyword argument '(\w+)'", str(err))
            if found is None or found.group(1) not in model_args:
                raise
            fixed.append(found.group(1))
            model_args.pop(found.group(1))


def timm_focalnet(job: ExportJob) -> torch.nn.Module:
    """timm's FocalNet with the task's architecture and weights: built by the backbone's own timm name where that
    reproduces the task's logits, else by ``focalbench_focalnet`` (see the module docstring)."""
    task = job.task
    trunk = focalnet_trunk(task, job.kind)
    args = focalnet_args(task, trunk)
    if args["patch_size"] != 4:
        raise ExportError(
            f"timm's FocalNet has a stride-4 stem; '{task.hparams.backbone}' has patch_size {args['patch_size']}"
        )
    if args["use_overlap_embed"] and args["stem_padding"] != 2:
        raise ExportError(f"timm's FocalNet pads its 7×7 stem by 2; this model pads by {args['stem_padding']}")
    model_args = {theirs: args[ours] for ours, theirs in _TIMM_ARGS.items()}
    name = task.hparams.backbone
    if name in timm.list_models("focalnet_*"):
        model, _ = _by_name(name, model_args, trunk.num_classes)
        try:
            model.load_state_dict(from_focalbench(trunk.state_dict(), model.state_dict(), "timm"))
        except CheckpointError:  # it fixes a size this model changes (a demo's embed_dim / depths)
            pass
        else:
            x = example_images(job.kind, job.preprocessing)[0]
            if torch.allclose(model.eval()(x), trunk(x), rtol=0, atol=TOLERANCE):  # and no flag it fixes differs
                return model
    model = timm.create_model(ANY_FOCALNET, pretrained=False, num_classes=trunk.num_classes, **model_args)
    model.load_state_dict(from_focalbench(trunk.state_dict(), model.state_dict(), "timm"))
    job.imports.append(f"import focalbench.export  # registers the timm entry point {ANY_FOCALNET}")
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
    architecture = model.pretrained_cfg["architecture"]
    job.notes.append(
        f'timm: `timm.create_model("local-dir:{job.output.name}", pretrained=True)` (architecture '
        f"`{architecture}`"
        + (", after `import focalbench.export`" if architecture == ANY_FOCALNET else "")
        + f"); its logits within {worst:.1e} of focalbench's"
    )
