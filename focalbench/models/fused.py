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
``inference_mode``, eval mode), on CPU, in fp32 or under CPU bf16 autocast (bf16 where oneDNN has bf16 kernels:
AVX-512 or AVX-NE-CONVERT CPUs, not AVX2-only ones). Elsewhere the plain modules run.
Every call takes its weight packed once into oneDNN's own layout (:func:`prepared_weight`). Under torch.compile the
two oneDNN calls are registered custom ops (``focalbench::conv_unary``, ``focalbench::conv1x1_binary``) with fake
kernels, so inductor keeps them and fuses the rest around them.
Forward hooks on the inner modules (``modulation.h``, ``mlp.fc1`` …) do not fire on this path: call
``set_fused_inference(False)`` on the model first (the modulation-map callback does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

_conv_unary = torch.ops.mkldnn._convolution_pointwise.default
_conv_binary = torch.ops.mkldnn._convolution_pointwise.binary
_CL = torch.channels_last
_MKLDNN = torch.backends.mkldnn.is_available()  # read once: torch.compile cannot trace the call
# oneDNN's bf16 convolutions need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; elsewhere (AVX2-only CPUs) they raise, and
# torch's bf16 convolutions and products fall back to reference kernels far slower than fp32's
ONEDNN_BF16 = _MKLDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def fused_path_available(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether the fused forward applies: CPU tensor, no grad wanted, eval mode, oneDNN present (for bf16, with
    its bf16 kernels). Under torch.compile too: the oneDNN calls are then the custom ops below, which inductor keeps
    as they are."""
    return (
        x.device.type == "cpu"
        and not module.training
        and not torch.is_grad_enabled()
        and not torch.compiler.is_exporting()  # exporters need plain ATen ops
        and _MKLDNN
        and x.dtype in (torch.float32, torch.bfloat16)
        and (ONEDNN_BF16 or _compute_dtype(x) == torch.float32)
    )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


# Each convolution's weight as its oneDNN call takes it: cast to the compute dtype, LayerScale γ folded in, and
# reordered ("packed") into oneDNN's blocked layout. A plain weight is reordered inside every call, a pass over all
# of the model's weights per forward; packed once, the deep stages' 1×1 calls (where the weights outweigh the
# activations) get 5-25 % faster. Keyed by the weight parameter itself, so that the same cache serves the eager
# calls and the custom ops under torch.compile (which receive the parameters), and nothing is stored on the module
# (deepcopy, pickling and state dicts stay as they were); an entry goes with its parameter.
# An entry is dropped when its weight changes: in-place ops bump the version counter (part of the key), but fused
# optimizers (AdamW(fused=True)) and collectives write without bumping it, so every optimizer step drops them all
# (the hook below), and so does each train()/eval() call on a block (Lightning evaluates after model.eval()).
_PREPARED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _drop_all_prepared(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    _PREPARED.clear()


register_optimizer_step_post_hook(_drop_all_prepared)


def prepared_weight(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    dtype: torch.dtype,
    padding: list[int],
    groups: int,
    input_shape: list[int],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight`` and ``bias`` in ``dtype``, scaled by ``scale`` (per output channel) and packed for oneDNN,
    cached until any of them changes (in-place ops and ``load_state_dict`` bump their versions, assigning ``.data``
    changes the storage, any optimizer step and any ``train()``/``eval()`` of the block drop the cache; after any
    other write, call :func:`release_prepared_weights`). The layout is chosen for the first ``input_shape``; oneDNN
    reorders on the fly for another, so any shape gives the same result."""
    tensors = [t for t in (weight, bias, scale) if t is not None]
    if any(t.is_inference() for t in tensors):  # no version counter: a change could not be seen, so no cache
        return _prepare(weight, bias, scale, dtype, padding, groups, input_shape)
    key = (dtype, *((t.data_ptr(), t._version) for t in tensors))
    cached = _PREPARED.get(weight)
    if cached is None or cached[0] != key:
        cached = (key, *_prepare(weight, bias, scale, dtype, padding, groups, input_shape))
        _PREPARED[weight] = cached
    return cached[1], cached[2]


def _prepare(weight, bias, scale, dtype, padding, groups, input_shape):  # noqa: ANN001, ANN202 - as above
    if scale is not None:
        weight, bias = weight * scale.view(-1, 1, 1, 1), bias * scale if bias is not None else None
    weight, bias = weight.to(dtype), bias.to(dtype) if bias is not None else None
    packed = torch.ops.mkldnn._reorder_convolution_weight(weight, padding, [1, 1], [1, 1], groups, input_shape)
    return packed, bias


def release_prepared_weights(module: nn.Module) -> None:
    """Drop the packed copies of ``module``'s weights: they are stale once the weights change, and this frees
    their memory."""
    for param in module.parameters():
        _PREPARED.pop(param, None)


def _unary(x, weight, bias, scale, padding, groups, attr):  # noqa: ANN001, ANN202 - the ops' signature below
    weight, bias = prepared_weight(weight, bias, scale, x.dtype, padding, groups, list(x.shape))
    return _conv_unary(x, weight, bias, padding, [1, 1], [1, 1], groups, attr, [], "none")


def _binary(x, other, weight, bias, scale, op):  # noqa: ANN001, ANN202
    weight, bias = prepared_weight(weight, bias, scale, x.dtype, [0, 0], 1, list(x.shape))
    return _conv_binary(x, other, weight, bias, [0, 0], [1, 1], [1, 1], 1, op, None, None, [], None)


# The two oneDNN calls as custom ops with fake (shape) kernels, for torch.compile: inductor keeps a custom op as
# one opaque call, while its own fake kernel for mkldnn._convolution_pointwise assumes channels_last inputs that its
# own passes arrange (ours may come in any layout: the op makes them channels_last, so its output always is). They
# take the module's parameters as they are, so the packed weights above are reused across compiled calls.
@torch.library.custom_op("focalbench::conv_unary", mutates_args=())
def _conv_unary_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    padding: list[int],
    groups: int,
    attr: str,
) -> torch.Tensor:
    x = x.contiguous(memory_format=_CL)
    return _unary(x, weight, bias, scale, padding, groups, attr).contiguous(memory_format=_CL)


@_conv_unary_op.register_fake
def _(x, weight, bias, scale, padding, groups, attr):  # noqa: ANN001, ANN202 - the op's signature
    n, _, h, w = x.shape
    k_h, k_w = weight.shape[-2:]
    size = (n, weight.shape[0], h + 2 * padding[0] - k_h + 1, w + 2 * padding[1] - k_w + 1)
    return x.new_empty(size).contiguous(memory_format=_CL)


@torch.library.custom_op("focalbench::conv1x1_binary", mutates_args=())
def _conv1x1_binary_op(
    x: torch.Tensor,
    other: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    op: str,
) -> torch.Tensor:
    x, other = x.contiguous(memory_format=_CL), other.contiguous(memory_format=_CL)
    return _binary(x, other, weight, bias, scale, op).contiguous(memory_format=_CL)


@_conv1x1_binary_op.register_fake
def _(x, other, weight, bias, scale, op):  # noqa: ANN001, ANN202
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:])).contiguous(memory_format=_CL)


def conv_unary(x: torch.Tensor, conv: nn.Conv2d, attr: str = "gelu") -> torch.Tensor:
    """``attr(conv(x))`` in one oneDNN call, ``attr`` "gelu" (exact erf GELU) or "none"; stride 1."""
    args = (x, conv.weight, conv.bias, None, list(conv.padding), conv.groups, attr)
    return _conv_unary_op(*args) if torch.compiler.is_compiling() else _unary(*args)


def conv_then(x: torch.Tensor, other: torch.Tensor, conv: nn.Conv2d, op: str, scale: torch.Tensor | None = None):
    """``scale·conv(x) ∘ other`` for a 1×1 ``conv`` and ``op`` in {"add", "mul"}, in one oneDNN call."""
    args = (x, other.to(x.dtype), conv.weight, conv.bias, scale, op)
    return _conv1x1_binary_op(*args) if torch.compiler.is_compiling() else _binary(*args)


def residual(x: torch.Tensor, y: torch.Tensor, conv: nn.Conv2d, gamma: torch.Tensor | None) -> torch.Tensor:
    """``x + γ·conv(y)``: fused when both share a dtype; under bf16 autocast the residual stream stays fp32, so
    the add is left to type promotion as in the unfused model."""
    if y.dtype == x.dtype:
        return conv_then(y, x, conv, "add", gamma)
    args = (y, conv.weight, conv.bias, gamma, [0, 0], 1, "none")
    return x + (_conv_unary_op(*args) if torch.compiler.is_compiling() else _unary(*args))


def modulation_fused(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``q ⊙ h(Σ_l G^l ⊙ Z^l)`` of :class:`FocalModulation`, before its ``ln`` and ``proj``."""
    q, ctx, gates = conv_unary(x, mod.f, "none").split((mod.dim, mod.dim, mod.focal_level + 1), dim=1)
    ctx_all = None
    for level, focal_layer in enumerate(mod.focal_layers):
        ctx = conv_unary(ctx, focal_layer[0])
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
        hidden = conv_unary(x.to(dtype), block.mlp.fc1)
        return x + block._scaled(block.norm2(block.mlp.fc2(hidden)), block.gamma_2)
    y = mod.ln(modulation_fused(mod, block.norm1(x).to(dtype)))
    x = residual(x, y.to(dtype), mod.proj, block.gamma_1)
    hidden = conv_unary(block.norm2(x).to(dtype), block.mlp.fc1)
    return residual(x, hidden, block.mlp.fc2, block.gamma_2)
