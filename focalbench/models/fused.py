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
Under torch.compile the two oneDNN calls are registered custom ops (``focalbench::conv_gelu``,
``focalbench::conv1x1_binary``) with fake kernels, so inductor keeps them and fuses the rest around them.
Forward hooks on the inner modules (``modulation.h``, ``mlp.fc1`` …) do not fire on this path: call
``set_fused_inference(False)`` on the model first (the modulation-map callback does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_conv_unary = torch.ops.mkldnn._convolution_pointwise.default
_conv_binary = torch.ops.mkldnn._convolution_pointwise.binary
_CL = torch.channels_last
_MKLDNN = torch.backends.mkldnn.is_available()  # read once: torch.compile cannot trace the call


def fused_path_available(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether the fused forward applies: CPU tensor, no grad wanted, eval mode, oneDNN present. Under
    torch.compile too: the oneDNN calls are then the custom ops below, which inductor keeps as they are."""
    return (
        x.device.type == "cpu"
        and not module.training
        and not torch.is_grad_enabled()
        and not torch.compiler.is_exporting()  # exporters need plain ATen ops
        and _MKLDNN
        and x.dtype in (torch.float32, torch.bfloat16)
    )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


def _weight(conv: nn.Conv2d, dtype: torch.dtype, scale: torch.Tensor | None = None):
    """The conv's weight and bias in ``dtype`` with γ folded in, cached on the module until any of them changes
    (an optimizer step bumps the tensors' versions), so repeated forwards do not re-cast or re-scale them. Under
    torch.compile the (small) cast and scale are traced instead: the cache's version checks would break the graph."""
    weight, bias = conv.weight, conv.bias
    if torch.compiler.is_compiling():
        return _scaled_cast(weight, bias, dtype, scale)
    key = (dtype, weight._version, weight.data_ptr())
    if bias is not None:
        key += (bias._version,)
    if scale is not None:
        key += (scale._version, scale.data_ptr())
    cached = getattr(conv, "_fused_weights", None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    weight, bias = _scaled_cast(weight, bias, dtype, scale)
    object.__setattr__(conv, "_fused_weights", (key, weight, bias))  # a plain attribute: not in the state dict
    return weight, bias


def _scaled_cast(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, scale: torch.Tensor | None):
    if scale is not None:
        weight, bias = weight * scale.view(-1, 1, 1, 1), bias * scale if bias is not None else None
    return weight.to(dtype), bias.to(dtype) if bias is not None else None


# The two oneDNN calls as custom ops with fake (shape) kernels, for torch.compile: inductor keeps a custom op as
# one opaque call, while its own fake kernel for mkldnn._convolution_pointwise assumes channels_last inputs that its
# own passes arrange (ours may come in any layout: the op makes them channels_last, so its output always is).
@torch.library.custom_op("focalbench::conv_gelu", mutates_args=())
def _conv_gelu_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: list[int], groups: int
) -> torch.Tensor:
    x = x.contiguous(memory_format=_CL)
    return _conv_unary(x, weight, bias, padding, [1, 1], [1, 1], groups, "gelu", [], "none").contiguous(
        memory_format=_CL
    )


@_conv_gelu_op.register_fake
def _(x, weight, bias, padding, groups):  # noqa: ANN001, ANN202 - the op's signature
    n, _, h, w = x.shape
    k_h, k_w = weight.shape[-2:]
    size = (n, weight.shape[0], h + 2 * padding[0] - k_h + 1, w + 2 * padding[1] - k_w + 1)
    return x.new_empty(size).contiguous(memory_format=_CL)


@torch.library.custom_op("focalbench::conv1x1_binary", mutates_args=())
def _conv1x1_binary_op(
    x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, op: str
) -> torch.Tensor:
    x, other = x.contiguous(memory_format=_CL), other.contiguous(memory_format=_CL)
    out = _conv_binary(x, other, weight, bias, [0, 0], [1, 1], [1, 1], 1, op, None, None, [], None)
    return out.contiguous(memory_format=_CL)


@_conv1x1_binary_op.register_fake
def _(x, other, weight, bias, op):  # noqa: ANN001, ANN202
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:])).contiguous(memory_format=_CL)


def conv_gelu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``GELU(conv(x))`` in one oneDNN call (exact erf GELU); stride 1."""
    weight, bias = _weight(conv, x.dtype)
    if torch.compiler.is_compiling():
        return _conv_gelu_op(x, weight, bias, list(conv.padding), conv.groups)
    return _conv_unary(x, weight, bias, list(conv.padding), [1, 1], [1, 1], conv.groups, "gelu", [], "none")


def conv_then(x: torch.Tensor, other: torch.Tensor, conv: nn.Conv2d, op: str, scale: torch.Tensor | None = None):
    """``scale·conv(x) ∘ other`` for a 1×1 ``conv`` and ``op`` in {"add", "mul"}, in one oneDNN call."""
    weight, bias = _weight(conv, x.dtype, scale)
    other = other.to(x.dtype)
    if torch.compiler.is_compiling():
        return _conv1x1_binary_op(x, other, weight, bias, op)
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
