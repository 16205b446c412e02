"""Building models by name: FocalNet variants from our registry, any other name from timm."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from focalbench.models.checkpoints import load_into
from focalbench.models.focalnet import FocalNet, FocalNetBackbone
from focalbench.models.variants import VARIANTS, get_variant


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


class TimmBackbone(nn.Module):
    """Any timm model as a multi-scale backbone with the same interface as :class:`FocalNetBackbone`."""

    def __init__(
        self, name: str, pretrained: str | bool | None = None, out_indices: Sequence[int] | None = None, **kwargs
    ) -> None:
        super().__init__()
        import timm

        if out_indices is None:
            # The last four levels at stride >= 4 (ResNets also expose their stride-2 stem as level 0).
            reductions = timm.create_model(
                name, features_only=True, pretrained=False, **kwargs
            ).feature_info.reduction()
            out_indices = [i for i, r in enumerate(reductions) if r >= 4][-4:]

        self.body = timm.create_model(
            name,
            **timm_pretrained_kwargs(pretrained),
            features_only=True,
            out_indices=tuple(out_indices),
            **kwargs,
        )
        info = self.body.feature_info
        self.out_channels = list(info.channels())
        self.strides = list(info.reduction())
        self.size_divisibility = max(self.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pad_h, pad_w = (-x.shape[2]) % self.size_divisibility, (-x.shape[3]) % self.size_divisibility
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
        features = self.body(x)
        # Some timm models (Swin) hand back NHWC maps: recognised by where the advertised channel count sits.
        return [
            f.permute(0, 3, 1, 2) if f.shape[1] != c and f.shape[-1] == c else f
            for f, c in zip(features, self.out_channels)
        ]


def build_backbone(
    name: str,
    *,
    pretrained: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    **overrides,
) -> nn.Module:
    """A dense-task backbone: a FocalNet variant (per-stage norms, focal window from ``overrides``) or any timm
    model with ``features_only=True`` (by default its last four levels at stride >= 4, e.g. 4/8/16/32). Both
    expose ``out_channels``, ``strides``, ``size_divisibility`` and return a list of NCHW feature maps."""
    if name not in VARIANTS:
        try:
            import timm

            known_to_timm = name in timm.list_models() or name.split(".")[0] in timm.list_models()
        except ImportError:
            known_to_timm = False
        if not known_to_timm:
            get_variant(name)  # raises with the known FocalNet names and the closest match
        return TimmBackbone(name, pretrained=pretrained, out_indices=out_indices, **overrides)
    variant = get_variant(name)
    model = FocalNetBackbone(out_indices=out_indices or (0, 1, 2, 3), **{**variant.kwargs, **overrides})
    model.variant = variant
    if pretrained:
        load_into(model, pretrained)
    return model
