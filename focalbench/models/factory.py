"""Building models by name: FocalNet variants from our registry, any other name from timm."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from focalbench.models.checkpoints import load_into
from focalbench.models.contract import pad_to_multiple, prefixed_matcher
from focalbench.models.focalnet import FocalNet, FocalNetBackbone, _FocalNetTrunk
from focalbench.models.variants import VARIANTS, get_variant

log = logging.getLogger(__name__)


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: str | os.PathLike | None = None,
    **overrides,
) -> FocalNet:
    """A FocalNet classifier by variant name (``focalnet_tiny_srf`` …), optionally with pretrained weights.

    ``pretrained`` is a local file (.pth/.pt/.bin/.safetensors, official, timm or Hugging Face layout) or a hub id;
    ``overrides`` replace the variant's architecture arguments (``drop_path_rate``, ``focal_windows`` …).
    """
    variant = get_variant(name)
    model = FocalNet(num_classes=num_classes, **{**variant.kwargs, **overrides})
    model.variant = variant
    if pretrained:
        load_into(model, pretrained)
    return model


def timm_pretrained_kwargs(pretrained: str | os.PathLike | bool | None) -> dict:
    """``timm.create_model`` arguments for weights given as a local file, a hub id, or True (timm's default)."""
    if isinstance(pretrained, (str, os.PathLike)):
        key = "file" if os.path.exists(pretrained) else "hf_hub_id"
        return {"pretrained": True, "pretrained_cfg_overlay": {key: str(pretrained)}}
    return {"pretrained": bool(pretrained)}


# FocalNet architecture arguments: they describe our model only, so a config written for FocalNet (embed_dim,
# depths, focal_windows …) must not reach another backbone when ``model.backbone`` names a timm model.
FOCALNET_ONLY_KWARGS = frozenset(inspect.signature(_FocalNetTrunk.__init__).parameters) - {
    "self",
    "in_chans",
    "drop_rate",
    "drop_path_rate",
    "grad_checkpointing",
}


def drop_focalnet_kwargs(name: str, kwargs: dict) -> dict:
    """``kwargs`` without the FocalNet architecture keys when ``name`` is not a FocalNet variant, saying which went."""
    if name in VARIANTS:
        return dict(kwargs)
    dropped = sorted(k for k in kwargs if k in FOCALNET_ONLY_KWARGS)
    if dropped:
        log.warning("model.backbone %s is not a FocalNet: ignoring the FocalNet settings %s", name, ", ".join(dropped))
    return {k: v for k, v in kwargs.items() if k not in FOCALNET_ONLY_KWARGS}


def _create_timm(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with a dynamic input size where the model supports one (ViT, Swin: dense inputs are
    not 224²)."""
    import timm

    try:
        return timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError as err:
        if "dynamic_img_size" not in str(err):
            raise
        return timm.create_model(name, **kwargs)


class TimmBackbone(nn.Module):
    """Any timm model as a :class:`~focalbench.models.contract.DenseBackbone`.

    The model is built once and wrapped by timm's ``FeatureGetterNet`` (its ``forward_intermediates``, NCHW output
    whatever the model's own layout, e.g. Swin's NHWC); ``out_channels`` / ``strides`` come from timm's
    ``feature_info``. By default the last four levels at stride >= 4 (ResNets also expose their stride-2 stem).
    ``group_matcher`` is the timm model's own, so layer-wise lr decay and stage freezing work as for FocalNet.
    """

    def __init__(
        self, name: str, pretrained: str | bool | None = None, out_indices: Sequence[int] | None = None, **kwargs
    ) -> None:
        super().__init__()
        from timm.models._features import FeatureGetterNet

        model = _create_timm(name, **timm_pretrained_kwargs(pretrained), **kwargs)
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(
                f"model.backbone {name}: this timm model has no forward_intermediates, so it cannot serve as a "
                "multi-scale backbone; choose another (resnet50, convnext_tiny, swin_tiny_*)"
            )
        if out_indices is None:
            reductions = [info["reduction"] for info in model.feature_info]
            out_indices = [i for i, r in enumerate(reductions) if r >= 4][-4:]
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        self.body = FeatureGetterNet(model, out_indices=tuple(out_indices), output_fmt="NCHW")
        info = self.body.feature_info
        self.out_channels = list(info.channels())
        self.strides = list(info.reduction())
        self.size_divisibility = max(self.strides)
        self.group_matcher = prefixed_matcher(self.body.model, "body.model.")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.model.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(pad_to_multiple(x, self.size_divisibility)))


def is_focalnet(name: str) -> bool:
    """Whether ``name`` is one of our FocalNet variants (else a timm model); a name that is neither is a
    :class:`~focalbench.errors.ConfigError` listing the FocalNet variants and the closest match."""
    if name in VARIANTS:
        return True
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        get_variant(name)  # raises with the known FocalNet names and the closest match
    return False


def build_backbone(
    name: str,
    *,
    pretrained: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    **overrides,
) -> nn.Module:
    """A :class:`~focalbench.models.contract.DenseBackbone`: a FocalNet variant (per-stage norms, focal window
    from ``overrides``; every stage by default) or any timm model (:class:`TimmBackbone`; by default its last four
    levels at stride >= 4, e.g. 4/8/16/32). ``out_indices`` picks the levels; negative ones count from the deepest
    (``(-3, -2, -1)``: strides 8/16/32 of either). FocalNet architecture ``overrides`` are dropped, with a warning,
    for a timm model, so one config serves both."""
    if not is_focalnet(name):
        overrides = drop_focalnet_kwargs(name, overrides)
        return TimmBackbone(name, pretrained=pretrained, out_indices=out_indices, **overrides)
    variant = get_variant(name)
    kwargs = {**variant.kwargs, **overrides}
    stages = len(kwargs.get("depths", (2, 2, 6, 2)))  # one for the *_iso
    indices = range(stages) if out_indices is None else [i % stages for i in out_indices]  # every stage by default
    model = FocalNetBackbone(out_indices=tuple(indices), **kwargs)
    model.variant = variant
    if pretrained:
        load_into(model, pretrained)
    return model
