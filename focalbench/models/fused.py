"""Inference fast path for FocalNet blocks on CPU: oneDNN convolutions with fused post-ops.

A profile of the eager forward spends ~25 % outside the convolutions, in GELU, the residual adds and the
modulator product, each one more pass over the activations. oneDNN (the library PyTorch's CPU convolutions
already use) applies such element-wise work inside the convolution as a *post-op*, while the output is still in
cache. The fused forms used here, all exact (erf GELU, fp32 accumulation):

* ``GELU(DWConv_k(Z))`` for every focal level and ``GELU(fc1(x))`` in the MLP (unary post-op);
* ``q ⊙ h(Z_out)``, the modulation itself (binary ``mul`` post-op on ``h``);
* ``x + γ·proj(·)`` and ``x + γ·fc2(·)``, the residuals (binary ``add`` post-op; LayerScale γ folded into the
  1×1 weights, since ``γ·(Wy + b) = (γW)y + γb``);
* the gated sum ``Σ_l G^l ⊙ Z^l`` accumulated in place with ``addcmul_`` (one pass per level, no temporaries).

These oneDNN ops have no autograd, so the path runs only where no gradient is wanted (``torch.no_grad`` /
``inference_mode``, eval mode), on CPU, in fp32 or under CPU bf16 autocast. Elsewhere the plain modules run.
Forward hooks on the inner modules (``modulation.h``, ``mlp.fc1`` …) do not fire on this path: call
``set_fused_inference(False)`` on the model first (the modulation-map callback does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_conv_unary = torch.ops.mkldnn._convolution_pointwise.default
_conv_binary = torch.ops.mkldnn._convolution_pointwise.binary


def fused_path_available(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether the fused forward applies: CPU tensor, no grad wanted, eval mode, oneDNN present."""
    return (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()  # under torch.compile, inductor does its own fusion
        and not module.training
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
        and x.dtype in (torch.float32, torch.bfloat16)
    )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def _weight(conv: nn.Conv2d, dtype: torch.dtype, scale: torch.Tensor | None = None):
    """The conv's weight and bias in ``dtype`` with γ folded in, cached on the module until any of them changes
    (an optimizer step bumps the tensors' versions), so repeated forwards do not re-cast or re-scale them."""
    key = (dtype, conv.weight._version, conv.weight.data_ptr())
    if conv.bias is not None:
        key += (conv.bias._version,)
    if scale is not None:
        key += (scale._version, scale.data_ptr())
    cached = getattr(conv, "_fused_weights", None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    weight, bias = conv.weight, conv.bias
    if scale is not None:
        weight, bias = weight * scale.view(-1, 1, 1, 1), bias * scale if bias is not None else None
    weight, bias = weight.to(dtype), bias.to(dtype) if bias is not None else None
    object.__setattr__(conv, "_fused_weights", (key, weight, bias))  # a plain attribute: not in the state dict
    return weight, bias


def conv_gelu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``GELU(conv(x))`` in one oneDNN call (exact erf GELU)."""
    weight, bias = _weight(conv, x.dtype)
    geometry = list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
    return _conv_unary(x, weight, bias, *geometry, "gelu", [], "none")


def conv_then(x: torch.Tensor, other: torch.Tensor, conv: nn.Conv2d, op: str, scale: torch.Tensor | None = None):
    """``scale·conv(x) ∘ other`` for ``op`` in {"add", "mul"}, in one oneDNN call."""
    weight, bias = _weight(conv, x.dtype, scale)
    other = other.to(x.dtype)
    return _conv_binary(x, other, weight, bias, [0, 0], [1, 1], [1, 1], 1, op, None, None, [], None)


def residual(x: torch.Tensor, y: torch.Tensor, conv: nn.Conv2d, gamma: torch.Tensor | None) -> torch.Tensor:
    """``x + γ·conv(y)``: fused when both share a dtype; under bf16 autocast the residual stream stays fp32, so
    the add is left to type promotion as in the unfused model."""
    if y.dtype == x.dtype:
        return conv_then(y, x, conv, "add", gamma)
    weight, bias = _weight(conv, y.dtype, gamma)
    return x + F.conv2d(y, weight, bias)


def modulation_fused(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``q ⊙ h(Σ_l G^l ⊙ Z^l)`` of :class:`FocalModulation`, before its ``ln`` and ``proj``."""
    weight, bias = _weight(mod.f, x.dtype)
    q, ctx, gates = F.conv2d(x, weight, bias).split((mod.dim, mod.dim, mod.focal_level + 1), dim=1)
    ctx_all = None
    for level, focal_layer in enumerate(mod.focal_layers):
        ctx = conv_gelu(ctx, focal_layer[0])
        gate = gates[:, level : level + 1]
        # the gated sum accumulates in place, one pass over memory per level (no grad here, so no autograd concern)
        ctx_all = ctx * gate if ctx_all is None else ctx_all.addcmul_(ctx, gate)
    ctx_global, gate = F.gelu(ctx.mean((2, 3), keepdim=True)), gates[:, mod.focal_level :]
    ctx_all = ctx_global * gate if ctx_all is None else ctx_all.addcmul_(ctx_global, gate)  # None: L = 0
    if mod.normalize_modulator:
        ctx_all.div_(mod.focal_level + 1)
    return conv_then(ctx_all, q, mod.h, "mul")


def block_fused(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:class:`FocalNetBlock` forward with fused post-ops (eval: DropPath and dropout are identities)."""
    dtype = _compute_dtype(x)
    mod = block.modulation
    if block.use_post_norm:  # x + γ·LN(proj(·)): the norm sits between, only the inner ops fuse
        y = mod.proj(mod.ln(modulation_fused(mod, x.to(dtype))))
        x = x + block._scaled(block.norm1(y), block.gamma_1)
        hidden = conv_gelu(x.to(dtype), block.mlp.fc1)
        return x + block._scaled(block.norm2(block.mlp.fc2(hidden)), block.gamma_2)
    y = mod.ln(modulation_fused(mod, block.norm1(x).to(dtype)))
    x = residual(x, y.to(dtype), mod.proj, block.gamma_1)
    hidden = conv_gelu(block.norm2(x).to(dtype), block.mlp.fc1)
    return residual(x, hidden, block.mlp.fc2, block.gamma_2)
