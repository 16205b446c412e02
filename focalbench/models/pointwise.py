"""1×1 convolutions whose training forward and backward each take the faster of two libraries, shape by shape.

On a ``channels_last`` map a 1×1 convolution is a matrix product over the (N·H·W, C) view, with no copy:
``y = x·Wᵀ + b``, ``∂x = g·W``, ``∂W = gᵀ·x``, ``∂b = Σ g``. PyTorch runs it as oneDNN's convolution; MKL runs the
same products as ``addmm``/``mm``. Which is faster depends on the shape and the machine: over FocalNet-T's
shapes MKL's backward was a few per cent slower on one of this project's machine instances and clearly faster on
another (AMX), most on the deep stages' small maps (``python benchmarks/pointwise_grad_speed.py`` times both per
shape). So, as ``torch.backends.cudnn.benchmark`` does for CUDA convolutions, each (pass, C_in, C_out, N·H·W rounded
up to a power of two, dtype, threads) key is timed on both libraries, then the faster runs every later call of that
key; the power-of-two bucket keeps inputs of varying sizes (detection) from timing every new size. The timing runs
are the key's first real calls, the two libraries in turn, each call's result used as it is: no pass is run twice,
so the timing costs no extra work, only the slower library for a few calls of each key (it decides within the first
steps of a training). Each library keeps buffers for the shapes it has run, so a key timed on both holds both for the
rest of the process: the choices are therefore written to disk per machine (:mod:`focalbench.models.autotune_cache`)
and a later run takes them without timing (the README's memory paragraph gives the measured peaks).

The choice only changes the order of floating-point sums (results agree to rounding); while a key is being timed
the libraries alternate, so a pass recomputed then may round differently (FocalNet's activation checkpointing
keeps its 1×1 layers on PyTorch's convolution: :class:`PointwiseConv2d`'s ``autotune``). It is off, oneDNN always,
under ``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic=True``), with
``FOCALBENCH_AUTOTUNE=0`` in the environment, and after :func:`set_autotune` (False). The inference forward is not
concerned: without grad the plain convolution runs (and FocalNet blocks take ``focalbench.models.fused``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from focalbench.models import autotune_cache

_conv_backward = torch.ops.aten.convolution_backward.default
_ARGS = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, transposed, output padding, groups

LIBRARIES = ("onednn", "mkl")
MARGIN = 0.95
"""MKL is kept only when its time is under this fraction of oneDNN's: a near tie keeps PyTorch's own path."""

TIMED_ROUNDS = 2
"""Timed calls of each library per key (after one not counted); the best of them counts."""

choices: dict[tuple, str] = {}
"""The library chosen per key (``(pass, C_in, C_out, rows' bit length, dtype, threads)``); clear it (and
:data:`trials`) and delete :func:`~focalbench.models.autotune_cache.cache_path`'s file to re-time."""

_enabled = os.environ.get("FOCALBENCH_AUTOTUNE", "1") != "0"


def set_autotune(enabled: bool) -> None:
    """Turn the timing on or off (off: oneDNN for every key not timed yet; :data:`choices` keeps the rest)."""
    global _enabled
    _enabled = enabled


def autotune_enabled() -> bool:
    return _enabled and not torch.are_deterministic_algorithms_enabled()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """The (N·H·W, C) view of a channels_last map (no copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _as_map(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n, _, h, w = like.shape
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


def forward_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x, weight, bias)


def forward_mkl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _as_map(F.linear(_rows(x), weight.flatten(1), bias), x)


def backward_onednn(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: list[bool]) -> tuple:
    return _conv_backward(g, x, weight, [weight.shape[0]] if mask[2] else None, *_ARGS, mask)


def backward_mkl(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: list[bool]) -> tuple:
    g_rows = _rows(g)
    grad_x = _as_map(g_rows @ weight.flatten(1), x) if mask[0] else None
    grad_w = (g_rows.t() @ _rows(x)).view_as(weight) if mask[1] else None
    grad_b = g_rows.sum(0) if mask[2] else None
    return grad_x, grad_w, grad_b


_PASSES = {
    "forward": {"onednn": forward_onednn, "mkl": forward_mkl},
    "backward": {"onednn": backward_onednn, "mkl": backward_mkl},
}

trials: dict[tuple, dict[str, list[float]]] = {}
"""The seconds each library took on a key's calls so far, for the keys not chosen yet."""


def _timed(fn: Callable[..., object], *args) -> tuple[object, float]:  # noqa: ANN002
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _trial(key: tuple, fns: dict[str, Callable[..., object]], args: tuple) -> object:
    """Runs ``args`` on the library with fewer timed calls of ``key`` (oneDNN first) and returns its result; once
    each library has run ``1 + TIMED_ROUNDS`` times (the first warms up: weight reorders, first-touch pages), records
    the faster by its best call in :data:`choices`."""
    seconds = trials.setdefault(key, {name: [] for name in LIBRARIES})
    library = min(LIBRARIES, key=lambda name: len(seconds[name]))
    result, elapsed = _timed(fns[library], *args)
    seconds[library].append(elapsed)
    if all(len(runs) > TIMED_ROUNDS for runs in seconds.values()):
        best = {name: min(runs[1:]) for name, runs in seconds.items()}
        choices[key] = "mkl" if best["mkl"] < MARGIN * best["onednn"] else "onednn"
        del trials[key]
        autotune_cache.store(key, choices[key])
    return result


def _key(kind: str, x: torch.Tensor, weight: torch.Tensor) -> tuple:
    rows = x.shape[0] * x.shape[2] * x.shape[3]
    return (kind, weight.shape[1], weight.shape[0], rows.bit_length(), x.dtype, torch.get_num_threads())


def _run(kind: str, x: torch.Tensor, weight: torch.Tensor, *args) -> object:  # noqa: ANN002
    fns = _PASSES[kind]
    key = _key(kind, x, weight)
    choice = choices.get(key)
    if choice is None:
        if not autotune_enabled():
            choice = choices[key] = "onednn"
        elif (choice := autotune_cache.stored(key, LIBRARIES)) is not None:
            choices[key] = choice
        else:
            return _trial(key, fns, args)
    return fns[choice](*args)


class _Pointwise(torch.autograd.Function):
    """``F.conv2d(x, weight, bias)`` (1×1) with each pass on the library timed faster for its shape (:func:`_trial`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _run("forward", x, weight, x, weight, bias)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        if not any(mask):
            return None, None, None
        return _run("backward", x, weight, g.contiguous(memory_format=torch.channels_last), x, weight, mask)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def pointwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1×1, stride-1 ``weight``; through :class:`_Pointwise` where a gradient
    is wanted of a CPU channels_last map (eager), elsewhere ``F.conv2d``. Under CPU autocast the operands are cast
    to the autocast dtype first, as autocast does for ``F.conv2d``."""
    wanted = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if (
        not (x.device.type == "cpu" and torch.is_grad_enabled() and wanted and _channels_last(x))
        or torch.compiler.is_compiling()
    ):
        return F.conv2d(x, weight, bias)
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _Pointwise.apply(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    if x.dtype != weight.dtype:
        return F.conv2d(x, weight, bias)  # let PyTorch raise its own error
    return _Pointwise.apply(x, weight, bias)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)`` (the same parameters and state dict) whose training passes go
    through :func:`pointwise_conv2d`; with ``autotune`` False, PyTorch's own convolution (oneDNN) throughout.

    FocalNet turns ``autotune`` off under activation checkpointing: MKL's cached buffers then land on the step's
    peak, which checkpointing is there to lower (the README's speed section gives the measured peaks).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)
        self.autotune = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.autotune:
            return F.conv2d(x, self.weight, self.bias)
        return pointwise_conv2d(x, self.weight, self.bias)


class PointwiseMlp(nn.Module):
    """timm's ``Mlp(use_conv=True)`` (``fc1`` → GELU → dropout → ``fc2`` → dropout, the same state dict) on
    :class:`PointwiseConv2d` layers."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = PointwiseConv2d(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = PointwiseConv2d(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
