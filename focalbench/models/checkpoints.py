"""Reading FocalNet weights in any of the three layouts found in the wild, and saving ours.

* official (microsoft/FocalNet): ``{"model": sd}``, channels-last Linear layers, ``h`` a 1×1 Conv;
* ours (focalbench): the official names, every projection a 1×1 kernel;
* timm: NCHW, every projection a 1×1 Conv, downsampling at the start of the next stage, ``ls1.gamma`` …;
* Hugging Face transformers: the official tensors under ``focalnet.encoder.stages.i.layers.j`` … names.

Everything is converted to our layout, then adapted to the target model:
a classifier head of another size is dropped (transfer learning), smaller depth-wise kernels are zero-padded around
the centre (focal window 3 → 9 for dense tasks), extra focal levels get new zero gates. Anything else that does not
fit is an error that names the keys and what the file holds. Files are read with ``weights_only=True`` or
safetensors; nothing executes code from a checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from focalbench.atomic import atomic_path
from focalbench.errors import FocalbenchError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
IN22K_CLASSES = 21842
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Per-token projections: Linear weights in the official / transformers files (except ``h``), 1×1 kernels in ours.
_POINTWISE = re.compile(r"\.(modulation\.(f|h|proj)|mlp\.(fc1|fc2))\.weight$")


class CheckpointError(FocalbenchError, ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why and what to do."""


class WeightsNotFoundError(FocalbenchError, FileNotFoundError):
    """Pretrained weights that are not there (no such file, folder without weights, hub id out of reach)."""


# --------------------------------------------------------------------------------------------------- reading


def resolve_weights_file(source: str | os.PathLike) -> Path:
    """A local weights file (or a folder holding ``model.safetensors`` / ``pytorch_model.bin``), or the file
    downloaded (or cached) for a hub id (``timm/focalnet_tiny_srf.ms_in1k``)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():  # a folder from `save_pretrained` or `hf download --local-dir`
        for filename in HUB_FILENAMES:
            if (path / filename).is_file():
                return path / filename
        raise WeightsNotFoundError(f"pretrained weights folder '{source}' holds neither {' nor '.join(HUB_FILENAMES)}")
    source = str(source)
    if path.suffix in WEIGHT_SUFFIXES or not _HUB_ID.match(source):
        raise WeightsNotFoundError(f"pretrained weights file '{source}' does not exist")
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in HUB_FILENAMES:
        try:
            return Path(hf_hub_download(source, filename))
        except Exception as err:  # offline, missing file, missing repo: all end in the same advice
            errors.append(f"{filename}: {type(err).__name__}")
    raise WeightsNotFoundError(
        f"could not get pretrained weights for hub id '{source}' (looked for {', '.join(HUB_FILENAMES)}: "
        f"{'; '.join(errors)}). Without network access, download the file elsewhere and pass its local path "
        f"instead, e.g. --model.pretrained /path/to/model.safetensors (.pth/.pt/.bin also work)."
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``model`` / ``state_dict`` / ``module`` containers."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read '{path}' as safetensors (corrupt or truncated?): {err}") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"cannot read '{path}' as a PyTorch checkpoint (weights_only=True): {err}") from err
    for wrapper in ("model", "state_dict", "module", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' holds no state dict of tensors")
    return _strip_prefix(state)


_ROOTS = ("patch_embed.", "stem.", "focalnet.", "layers.", "embeddings.", "encoder.")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``backbone.``, ``model.``, Lightning's ``model.backbone.``) in front of the model."""
    if any(k.startswith(_ROOTS) for k in state):
        return state
    for key in state:
        for root in ("patch_embed.proj.weight", "stem.proj.weight", "focalnet.embeddings."):
            if root in key:
                prefix = key[: key.index(root)]
                return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


# ------------------------------------------------------------------------------------------------ converting


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``"hf"``, ``"timm"``, ``"official"`` or ``"focalbench"``; a file of another architecture is an error."""
    keys = state.keys()
    if any(k.startswith(("focalnet.", "encoder.stages.", "embeddings.patch_embeddings")) for k in keys):
        return "hf"
    if "stem.proj.weight" in state:
        return "timm"
    if "patch_embed.proj.weight" in state:
        f = next((v for k, v in state.items() if k.endswith("modulation.f.weight")), None)
        return "official" if f is not None and f.ndim == 2 else "focalbench"
    sample = ", ".join(list(keys)[:6])
    raise CheckpointError(f"not a FocalNet checkpoint (no patch embedding / stem keys); first keys: {sample}")


def _rename_timm(key: str) -> str:
    key = key.replace("stem.", "patch_embed.", 1) if key.startswith("stem.") else key
    key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
    key = key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
    key = key.replace(".norm1_post.", ".norm1.").replace(".norm2_post.", ".norm2.")
    key = key.replace(".modulation.norm.", ".modulation.ln.")
    return key.replace("head.fc.", "head.", 1) if key.startswith("head.fc.") else key


_HF_RENAMES = [
    (r"^focalnet\.", ""),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"layers.\1.blocks.\2."),
    (r"^encoder\.stages\.(\d+)\.downsample\.projection\.", r"layers.\1.downsample.proj."),
    (r"^encoder\.stages\.(\d+)\.downsample\.norm\.", r"layers.\1.downsample.norm."),
    (r"\.modulation\.projection_in\.", ".modulation.f."),
    (r"\.modulation\.projection_context\.", ".modulation.h."),
    (r"\.modulation\.projection_out\.", ".modulation.proj."),
    (r"\.modulation\.layernorm\.", ".modulation.ln."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


def _rename_hf(key: str) -> str:
    for pattern, repl in _HF_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def to_focalbench(state: dict[str, torch.Tensor], layout: str | None = None) -> dict[str, torch.Tensor]:
    """Convert a state dict of any known layout to ours (official names, projections as 1×1 kernels)."""
    layout = layout or detect_layout(state)
    rename = {"timm": _rename_timm, "hf": _rename_hf}.get(layout, lambda k: k)
    out = {}
    for key, value in state.items():
        if key.endswith("mask_token"):  # transformers' masked-image-modelling token: not part of the classifier
            continue
        key = rename(key)
        if _POINTWISE.search(key) and value.ndim == 2:
            value = value[:, :, None, None]
        out[key] = value
    return out


def describe(state: dict[str, torch.Tensor]) -> dict:
    """The architecture a state dict in our layout implies: what a user needs to pick the right variant."""
    depths = []
    while any(k.startswith(f"layers.{len(depths)}.") for k in state):
        i = len(depths)
        depths.append(len({k.split(".")[3] for k in state if k.startswith(f"layers.{i}.blocks.")}))
    stem = state["patch_embed.proj.weight"]
    levels, windows = [], []
    for i in range(len(depths)):
        kernels = [
            v.shape[-1]
            for k, v in state.items()
            if re.match(rf"layers\.{i}\.blocks\.0\.modulation\.focal_layers\.\d+\.0\.weight", k)
        ]
        levels.append(len(kernels))
        windows.append(min(kernels) if kernels else None)
    head = state.get("head.weight")
    return {
        "embed_dim": stem.shape[0],
        "depths": tuple(depths),
        "patch_size": stem.shape[-1] if stem.shape[-1] != 7 else 4,
        "focal_levels": tuple(levels),
        "focal_windows": tuple(windows),
        "use_overlap_embed": stem.shape[-1] == 7,
        "layerscale": any(k.endswith("gamma_1") for k in state),
        "post_norm_in_modulation": any(".modulation.ln." in k for k in state),
        "num_classes": head.shape[0] if head is not None else 0,
    }


# What the weights tell of the architecture, in the order of the variants' own arguments below.
_ARCHITECTURE = ("embed_dim", "depths", "patch_size", "focal_levels", "focal_windows")
_FLAGS = (("use_overlap_embed", "use_overlap_embed"), ("layerscale", "layerscale_value"))
_FLAGS += (("post_norm_in_modulation", "use_post_norm_in_modulation"),)


def matching_variants(info: dict) -> list[str]:
    """The registered variants with the architecture :func:`describe` found (the class count and the parameter-free
    flags, post-norm and ``normalize_modulator``, cannot be told from the weights)."""
    from focalbench.models.variants import VARIANTS

    found = []
    for name, variant in VARIANTS.items():
        kw = variant.kwargs
        stages = len(kw["depths"])
        per_stage = [
            tuple(v) if isinstance(v, (list, tuple)) else (v,) * stages
            for v in (kw["focal_levels"], kw["focal_windows"])
        ]
        arch = (kw["embed_dim"], tuple(kw["depths"]), kw.get("patch_size", 4), *per_stage)
        flags = tuple(kw.get(arg) not in (None, False) for _, arg in _FLAGS)
        if arch + flags == tuple(info[k] for k in _ARCHITECTURE) + tuple(bool(info[k]) for k, _ in _FLAGS):
            found.append(name)
    return found


# ------------------------------------------------------------------------------------------------- adapting


def _adapt(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> tuple[dict, list[str], list[str]]:
    """Fit ``state`` to the target's shapes where the paper's transfer recipes say how; returns what was allowed
    to stay missing and notes for the log."""
    state = dict(state)
    allowed_missing, notes = [], []
    head, want_head = state.get("head.weight"), target.get("head.weight")
    if head is not None and want_head is not None and head.shape[0] == IN22K_CLASSES and want_head.shape[0] == 1000:
        # the ImageNet-22K heads list the ImageNet-1K classes first: keep those rows
        state["head.weight"], state["head.bias"] = head[:1000], state["head.bias"][:1000]
        notes.append("ImageNet-22K head cut to its first 1000 rows (the ImageNet-1K classes)")
    if "head.weight" in state and (want_head is None or state["head.weight"].shape != want_head.shape):
        old = state.pop("head.weight").shape[0]
        state.pop("head.bias", None)
        if "head.weight" in target:
            allowed_missing += ["head.weight", "head.bias"]
            notes.append(
                f"classifier head dropped ({old} classes in the file, {target['head.weight'].shape[0]} in the model)"
                " and re-initialised"
            )
    if "norm.weight" not in target:  # a classification checkpoint into the dense backbone
        state.pop("norm.weight", None), state.pop("norm.bias", None)
    new_norms = [k for k in target if re.match(r"norm\d\.", k) and k not in state]
    if new_norms:
        allowed_missing += new_norms
        notes.append("per-stage output norms norm0..3 newly initialised")
    unused_norms = [k for k in state if re.match(r"norm\d\.", k) and k not in target]
    if unused_norms:  # a backbone of fewer levels (DINO-4scale: strides 8-32) from a checkpoint of every level
        for key in unused_norms:
            del state[key]
        notes.append("output norms of levels the model does not return dropped")
    for key, value in list(state.items()):
        want = target.get(key)
        if want is None or want.shape == value.shape:
            continue
        if (
            ".focal_layers." in key
            and value.shape[:2] == want.shape[:2]
            and (want.shape[-1] - value.shape[-1]) % 2 == 0
            and want.shape[-1] > value.shape[-1]
        ):
            pad = (want.shape[-1] - value.shape[-1]) // 2
            state[key] = F.pad(value, (pad, pad, pad, pad))  # larger focal window: zero-padded around the centre
            notes.append("depth-wise kernels zero-padded to the larger focal window")
        elif key.endswith("modulation.f.weight") or key.endswith("modulation.f.bias"):
            extra = want.shape[0] - value.shape[0]
            if extra > 0 and value.shape[1:] == want.shape[1:]:
                # more focal levels: q, context and level gates copied, global gate kept last, new gates zero
                grown = value.new_zeros(want.shape)
                grown[: value.shape[0] - 1] = value[:-1]
                grown[-1] = value[-1]
                state[key] = grown
                prefix = key.rsplit(".f.", 1)[0]
                allowed_missing += [k for k in target if k.startswith(prefix + ".focal_layers.") and k not in state]
                notes.append("extra focal levels added with zero gates")
    return state, allowed_missing, sorted(set(notes))


def load_into(model: nn.Module, source: str | os.PathLike) -> dict:
    """Load pretrained FocalNet weights (a local file of any layout, or a hub id) into ``model``.

    Returns what the file held (``layout``, the inferred architecture). A mismatch other than those :func:`_adapt`
    handles raises :class:`CheckpointError` naming the keys and the architecture the file implies.
    """
    path = resolve_weights_file(source)
    raw = read_state_dict(path)
    layout = detect_layout(raw)
    state = to_focalbench(raw, layout)
    info = {"layout": layout, **describe(state)}
    target = model.state_dict()
    state, allowed_missing, notes = _adapt(state, target)
    missing = [k for k in target if k not in state and k not in allowed_missing]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        for label, items in (
            ("missing in the file", missing),
            ("not in the model", unexpected),
            ("shape differs", mismatched),
        ):
            if items:
                problems.append(f"{label} ({len(items)}): {', '.join(items[:8])}{' …' if len(items) > 8 else ''}")
        implied = ", ".join(f"{k}={v}" for k, v in info.items())
        variants = matching_variants(info)
        implied += f" (the architecture of {' / '.join(variants)})" if variants else " (no registered variant)"
        raise CheckpointError(
            f"'{path}' does not fit this model. The file holds a FocalNet with {implied}. " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    for note in notes:
        log.warning("%s: %s", path.name, note)
    return info


# --------------------------------------------------------------------------------------------------- saving


def save_safetensors(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's weights as safetensors atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(state, temporary, metadata={"format": "pt", "layout": "focalbench", **(metadata or {})})
    return path
