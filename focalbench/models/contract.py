"""The dense-backbone contract every detection / segmentation head is built on (detectron2's ``Backbone`` as the
model), written down once and implemented by :class:`~focalbench.models.focalnet.FocalNetBackbone` and
:class:`~focalbench.models.factory.TimmBackbone`.

A head sizes itself from ``out_channels`` and ``strides``, never from hard-coded widths; the trainer's optimizer
groups use ``group_matcher`` (layer-wise lr decay, stage freezing); the data and the pictures use the one input
normalisation :func:`input_normalization` reads off the backbone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import group_parameters
from torch import nn

from focalbench.errors import ConfigError

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
IMAGENET_NORMALIZATION: Normalization = (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))


@runtime_checkable
class DenseBackbone(Protocol):
    """What a dense head may rely on.

    Attributes:
        out_channels: channels of each returned map.
        strides: the input-to-map downsampling of each returned map (4/8/16/32 for the usual four levels).
        size_divisibility: inputs are zero-padded (right / bottom) to a multiple of this inside ``forward``, so
            every level halves exactly; a batching transform may pad to it beforehand.

    ``forward(x)`` takes an N×3×H×W batch and returns one N×C×h×w tensor (NCHW) per level, in ``strides`` order.
    ``set_grad_checkpointing(enable)`` recomputes activations in the backward pass. ``group_matcher(coarse)``
    groups the parameters by depth as timm's models do (stem first, then blocks or stages), for layer-wise lr
    decay and :func:`freeze_stages`.
    """

    out_channels: list[int]
    strides: list[int]
    size_divisibility: int

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...

    def group_matcher(self, coarse: bool = False) -> dict | Callable[[str], tuple]: ...


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad an NCHW batch on the right and bottom to a multiple of ``divisor`` (no copy when it already is)."""
    pad_h, pad_w = (-x.shape[-2]) % divisor, (-x.shape[-1]) % divisor
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def input_normalization(module: nn.Module) -> Normalization:
    """The mean / std the module's weights expect on [0, 1] RGB input: its timm ``pretrained_cfg`` where it has one
    (some timm weights use 0.5 / 0.5, CLIP-trained ones their own), ImageNet's otherwise (FocalNet, ResNets)."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None or len(mean) != 3:
        return IMAGENET_NORMALIZATION
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def layer_ids(module: nn.Module, coarse: bool = False) -> dict[str, int]:
    """Parameter name -> depth ordinal from the module's ``group_matcher`` (0 = stem)."""
    return group_parameters(module, module.group_matcher(coarse=coarse), reverse=True)


def freeze_stages(module: nn.Module, num_stages: int) -> list[str]:
    """Freeze the stem and the first ``num_stages`` stages of any model with a timm-style ``group_matcher`` (our
    FocalNets, timm models, :class:`TimmBackbone`); returns the frozen parameter names.

    Stages are the coarse groups: ordinal 0 is the stem, 1..S the stages; the top (final norm, head) never freezes.
    """
    if not hasattr(module, "group_matcher"):
        name = type(module).__name__
        raise ConfigError(f"model.frozen_stages needs a model with stages; {name} has no group_matcher")
    ids = layer_ids(module, coarse=True)
    stages = sorted(set(ids.values()))
    if num_stages >= len(stages) - 1:
        raise ConfigError(
            f"model.frozen_stages={num_stages}: the backbone has {len(stages) - 1} parameter groups after the stem; "
            "freeze fewer stages or use model.freeze_backbone"
        )
    frozen = [name for name, ordinal in ids.items() if ordinal <= num_stages]
    params = dict(module.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen


def prefixed_matcher(inner: nn.Module, prefix: str) -> Callable[[bool], Callable[[str], tuple]]:
    """A ``group_matcher`` for a wrapper holding ``inner`` under ``prefix`` (e.g. ``body.model.``): the inner
    model's grouping, looked up by the name without the prefix. Names outside ``inner`` go to the top."""
    pattern = re.compile("^" + re.escape(prefix))

    def matcher(coarse: bool = False) -> Callable[[str], tuple]:
        ids = layer_ids(inner, coarse)
        top = max(ids.values(), default=0) + 1
        return lambda name: (ids.get(pattern.sub("", name), top),)

    return matcher
