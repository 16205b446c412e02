"""Parameter groups (layer-wise lr decay, no weight decay on norms/biases/LayerScale) and per-step lr schedules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

Schedule = Literal["cosine", "poly", "step", "constant"]


def default_optimizer(params) -> torch.optim.Optimizer:
    """AdamW as the configs set it: ``fused`` (one kernel for the whole update; PyTorch's default on CPU is a Python
    loop over the parameters, several times slower: ``benchmarks/optimizer_speed.py``)."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, fused=True)


def param_groups(backbone: nn.Module, heads: Sequence[nn.Module], layer_decay: float | None = None) -> list[dict]:
    """Optimizer groups: the backbone by depth (timm's ``param_groups_layer_decay`` over its ``group_matcher``,
    lr scaled by ``layer_decay ** (depth from the top)``), the heads at full lr (also a head that is part of the
    backbone module, as a classifier's).

    Tensors of one dimension (norms, biases, LayerScale γ) get ``weight_decay=0``; the other groups carry no
    ``weight_decay`` key, so the optimizer's own setting (from the config) applies to them.
    """
    sentinel = 1.0  # marks decayed groups, whose key is then removed
    if layer_decay is not None:  # without a group_matcher timm groups the layers itself, warning if it cannot
        groups = param_groups_layer_decay(backbone, weight_decay=sentinel, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(backbone, weight_decay=sentinel)
    # A head may sit inside the backbone module (a classifier's ``head``): it trains in its own groups, at full lr.
    in_heads = {id(p) for head in heads for p in head.parameters()}
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in in_heads]
    for head in heads:
        groups += [{**g, "lr_scale": 1.0} for g in param_groups_weight_decay(head, weight_decay=sentinel)]
    groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
    for group in groups:
        group["params"] = [p for p in group["params"] if p.requires_grad]
        if group.get("weight_decay") == sentinel:
            del group["weight_decay"]
    return groups


def lr_lambda(
    total_steps: int,
    warmup_steps: int,
    schedule: Schedule = "cosine",
    *,
    min_lr_ratio: float = 0.0,
    poly_power: float = 1.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
):
    """lr multiplier per optimizer step: linear warm-up from 1e-3, then cosine / poly / step decay or constant."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 1e-3 + (1 - 1e-3) * step / max(1, warmup_steps)
        if schedule == "step":
            return gamma ** sum(step >= m for m in milestones)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else (1 - progress) ** poly_power
        return min_lr_ratio + (1 - min_lr_ratio) * decay

    return factor
