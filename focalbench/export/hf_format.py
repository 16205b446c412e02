"""``huggingface``: a folder ``transformers`` loads with ``from_pretrained``.

A classifier becomes ``FocalNetForImageClassification`` (``id2label`` from the class names), checked by reloading
it and comparing logits (1e-4). A dense task's FocalNet backbone becomes ``FocalNetModel`` (the pretrained trunk to
hand on: focalbench's ``pretrained:`` reads it back); its per-stage output norms ``norm0..3``, which transformers'
FocalNet has no place for, are saved beside as ``dense_norms.safetensors``; the check compares the stage outputs
before downsampling. Architectures transformers cannot express are refused with one line.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from focalbench.export.core import ExportError, ExportJob, check_close, example_images
from focalbench.export.networks import focalnet_args, focalnet_trunk
from focalbench.models.checkpoint_export import from_focalbench
from focalbench.models.focalnet import FocalNetBackbone

TOLERANCE = 1e-4


def hf_config(job: ExportJob, args: dict):
    """transformers' ``FocalNetConfig`` for our architecture arguments."""
    from transformers import FocalNetConfig

    if args["use_overlap_embed"] and args["stem_padding"] != 2:
        raise ExportError(
            f"transformers' FocalNet pads its 7×7 stem by 2; this model pads by {args['stem_padding']} "
            "(the dense-task stem of the large models)"
        )
    names = job.class_names
    dims = [args["embed_dim"] * 2**i for i in range(len(args["depths"]))]
    return FocalNetConfig(
        image_size=job.preprocessing["input_size"][-1],
        patch_size=args["patch_size"],
        embed_dim=args["embed_dim"],
        depths=args["depths"],
        hidden_sizes=dims[1:] + dims[-1:],
        focal_levels=args["focal_levels"],
        focal_windows=args["focal_windows"],
        mlp_ratio=args["mlp_ratio"],
        use_conv_embed=args["use_overlap_embed"],
        use_layerscale=args["layerscale_value"] is not None,
        layerscale_value=args["layerscale_value"] or 1e-4,
        use_post_layernorm=args["use_post_norm"],
        use_post_layernorm_in_modulation=args["use_post_norm_in_modulation"],
        normalize_modulator=args["normalize_modulator"],
        drop_path_rate=0.0,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )


def export_huggingface(job: ExportJob) -> None:
    try:
        from transformers import FocalNetForImageClassification, FocalNetModel
    except ImportError:
        raise ExportError("the huggingface format needs transformers: pip install 'focalbench[export]'") from None

    trunk = focalnet_trunk(job.task, job.kind)
    if trunk is None:
        raise ExportError(
            f"transformers has no model for the timm backbone '{job.task.hparams.backbone}'; use --format timm or onnx"
        )
    config = hf_config(job, focalnet_args(job.task, trunk))
    ours = trunk.state_dict()
    inputs = example_images("classification", job.preprocessing)
    if isinstance(trunk, FocalNetBackbone):
        norms = {k: v.contiguous() for k, v in ours.items() if k.split(".")[0].startswith("norm")}
        model = FocalNetModel(config, add_pooling_layer=False)
        target = model.state_dict()
        kept = {k: v for k, v in target.items() if k.startswith("layernorm.")}  # the final norm: unused here
        filled = from_focalbench(
            {k: v for k, v in ours.items() if k not in norms}, {k: v for k, v in target.items() if k not in kept}, "hf"
        )
        model.load_state_dict({**filled, **kept})
        model.save_pretrained(job.output)
        save_file(norms, str(job.output / "dense_norms.safetensors"))
        loaded = FocalNetModel.from_pretrained(job.output).eval()
        with torch.no_grad():
            worst = max(
                check_close("transformers", _stages_before_downsampling(loaded, x), trunk.forward_stages(x), TOLERANCE)
                for x in inputs
            )
        job.files += ["model.safetensors", "config.json", "dense_norms.safetensors"]
        job.notes.append(
            f"transformers: `FocalNetModel.from_pretrained(...)`, the backbone trunk; its stage outputs before "
            f"downsampling within {worst:.1e} of focalbench's (the per-stage norms norm0..3 in dense_norms.safetensors)"
        )
        return
    model = FocalNetForImageClassification(config)
    model.load_state_dict(from_focalbench(ours, model.state_dict(), "hf"))
    model.save_pretrained(job.output)
    image_processor(job.preprocessing).save_pretrained(job.output)
    loaded = FocalNetForImageClassification.from_pretrained(job.output).eval()
    with torch.no_grad():
        worst = max(check_close("transformers", [loaded(pixel_values=x).logits], [trunk(x)], TOLERANCE) for x in inputs)
    job.files += ["model.safetensors", "config.json", "preprocessor_config.json"]
    job.notes.append(
        f"transformers: `FocalNetForImageClassification.from_pretrained(...)`; its logits within {worst:.1e} of "
        "focalbench's"
    )


def image_processor(prep: dict):
    """The evaluation transform for ``AutoImageProcessor``: ConvNeXt's processor resizes the shorter side to
    size / crop_pct and centre-crops size, as focalbench's evaluation does (bicubic, ImageNet mean / std)."""
    from PIL import Image
    from transformers import ConvNextImageProcessor

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[prep["interpolation"]]
    return ConvNextImageProcessor(
        size={"shortest_edge": prep["input_size"][-1]},
        crop_pct=prep["crop_pct"],
        resample=resample,
        image_mean=list(prep["mean"]),
        image_std=list(prep["std"]),
    )


def _stages_before_downsampling(model, x: torch.Tensor) -> list[torch.Tensor]:
    """transformers' encoder states before each stage's downsampling, as NCHW maps. Stage by stage: its encoder's
    ``output_hidden_states_before_downsampling`` reshapes them with the downsampled size (transformers 5.24)."""
    hidden, dims = model.embeddings(x)
    outputs = []
    for stage in model.encoder.stages:
        after, before, out_dims = stage(hidden, dims)
        outputs.append(before.transpose(1, 2).reshape(len(x), -1, *dims))
        hidden, dims = after, tuple(out_dims[-2:])
    return outputs
