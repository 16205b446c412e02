"""Depth-wise convolution whose weight gradient on CPU takes oneDNN's fast depth-wise kernel at every size.

oneDNN's JIT depth-wise weight-gradient kernel accepts kernels at most 3 wide (any height); a wider kernel falls
to its generic grouped convolution, which pads every single-channel group to a 16×16 channel block and runs about
10-100× slower (``ONEDNN_VERBOSE=1`` names ``jit:avx512_core`` with ``aBCde16c16b`` weights instead of
``jit_dw``). That is the focal levels' 5×5, 7×7 and the dense tasks' 9-13 kernels. Here the k×k weight gradient
is assembled from ``ceil(k/3)`` strips of k×3 columns, each a depth-wise weight gradient the fast kernel accepts:

    grad_w[c, i, s+dj] = Σ_{n,h,w} x[n, c, h+i-p, w+s+dj] · g[n, c, h, w]        (p = k//2, dj ∈ {-1, 0, 1})

is the k×3 weight gradient of ``x`` shifted left by s columns. Both tensors are copied once into buffers padded
with p zero columns on each side (plus slack at the end); a column shift is then a *view* of the buffer at a
storage offset (the rows are contiguous, so a shift wraps at a row's end into the next row's zero columns, where
the output gradient is zero too). ``benchmarks/dw_grad_speed.py`` compares this with autograd's default and other
formulations per kernel size, precision and layout; the forward and the input gradient stay oneDNN's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_conv_backward = torch.ops.aten.convolution_backward.default


def strip_centres(kernel_size: int) -> list[int]:
    """Column offsets s of the k×3 strips (columns s-1..s+1) that cover a k-wide kernel's columns -p..p."""
    p = kernel_size // 2
    count = -(-kernel_size // 3)
    return [min(-p + 1 + 3 * i, p - 1) for i in range(count)]


CHUNK_BYTES = 4 * 2**20
"""Size of one chunk of ``x`` (images, or row bands of one image) that the strips process at a time: the padded
copies then come from reused heap memory and stay in cache for the ceil(k/3) strips, where whole-tensor copies
cost fresh pages (page faults) and a trip to memory per strip (3x slower in fp32 at FocalNet-T's first stage)."""


def _padded(t: torch.Tensor, rows: tuple[int, int], p: int, halo: int, slack: int, channels_last: bool):
    """Rows ``rows`` of ``t`` (N, C, H, W) with ``halo`` rows above and below (zeros outside the image) and ``p``
    zero columns on both sides, in a fresh buffer with ``slack`` more columns' worth of zeros at its end, so that
    views shifted right by up to ``slack`` columns stay inside it. Only the padding is zero-filled."""
    n, c, h, w = t.shape
    top, bottom = rows[0] - halo, rows[1] + halo
    hp, wp = bottom - top, w + 2 * p
    size, tail = n * c * hp * wp, slack * (c if channels_last else 1)
    buffer = t.new_empty(size + tail)
    buffer[size:].zero_()
    strides = (hp * wp * c, 1, wp * c, c) if channels_last else (c * hp * wp, hp * wp, wp, 1)
    padded = buffer.as_strided((n, c, hp, wp), strides)
    padded[..., :p].zero_()
    padded[..., p + w :].zero_()
    inside = (max(top, 0), min(bottom, h))
    padded[:, :, : inside[0] - top, p : p + w].zero_()
    padded[:, :, inside[1] - top :, p : p + w].zero_()
    padded[:, :, inside[0] - top : inside[1] - top, p : p + w] = t[:, :, inside[0] : inside[1]]
    return padded


def _shifted(padded: torch.Tensor, shift: int) -> torch.Tensor:
    """``padded`` read ``shift`` (>= 0) columns to the right: a view of the same buffer."""
    return padded.as_strided(padded.shape, padded.stride(), padded.storage_offset() + shift * padded.stride(3))


def _chunks(shape: torch.Size, itemsize: int, budget: int) -> list[tuple[slice, tuple[int, int]]]:
    """(images, rows) chunks of about ``budget`` bytes: whole images where one fits, else bands of rows."""
    n, c, h, w = shape
    image = c * h * w * itemsize
    if image <= budget:
        step = budget // image
        return [(slice(i, i + step), (0, h)) for i in range(0, n, step)]
    rows = max(1, budget // (c * w * itemsize))
    return [(slice(i, i + 1), (r, min(r + rows, h))) for i in range(n) for r in range(0, h, rows)]


def strip_weight_grad(
    x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int, chunk_bytes: int = CHUNK_BYTES
) -> torch.Tensor:
    """Weight gradient (C, 1, k, k) of a stride-1, 'same'-padded (k//2), odd-k depth-wise convolution of ``x``
    with output gradient ``grad_out``, as ``ceil(k/3)`` k×3 strips (see the module docstring), chunk by chunk
    (``chunk_bytes`` of ``x`` each; the chunks' sums are accumulated in fp32)."""
    k, p, channels = kernel_size, kernel_size // 2, x.shape[1]
    channels_last = x.stride(1) < x.stride(3)  # channels innermost: also a channel slice of a channels_last map
    centres = strip_centres(k)
    slack = max(abs(s) for s in centres)
    strip = x.new_empty(channels, 1, k, 3)  # only its shape and dtype are read
    args = (None, [1, 1], [0, 1], [1, 1], False, [0, 0], channels, [False, True, False])
    chunks = _chunks(x.shape, x.element_size(), chunk_bytes)
    grad = x.new_empty(channels, 1, k, k)
    total = torch.zeros(grad.shape, dtype=torch.float32) if len(chunks) > 1 else grad
    for images, rows in chunks:
        x_pad = _padded(x[images], rows, p, p, slack, channels_last)
        g_pad = _padded(grad_out[images], rows, p, 0, slack, channels_last)
        for s in centres:
            # shifting x right by s equals shifting the output gradient left by s: keep both views in the buffers
            xs, gs = (_shifted(x_pad, s), g_pad) if s >= 0 else (x_pad, _shifted(g_pad, -s))
            grad[..., s - 1 + p : s + 2 + p] = _conv_backward(gs, xs, strip, *args)[1]
        if total is not grad:
            total.add_(grad)
    return total.to(x.dtype)


def default_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Autograd's own depth-wise weight gradient (stride 1, 'same' padding)."""
    p = weight.shape[-1] // 2
    args = (None, [1, 1], [p, p], [1, 1], False, [0, 0], weight.shape[0], [False, True, False])
    return _conv_backward(grad_out, x, weight, *args)[1]


STRIPS_FROM = 5
"""Smallest kernel whose weight gradient takes the strips: oneDNN's own depth-wise kernel serves 3×3 (it is faster
there than one strip plus the padded copies; ``benchmarks/dw_grad_speed.py``)."""


def input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Input gradient of a stride-1, 'same'-padded, odd-k depth-wise convolution: the *forward* depth-wise
    convolution of the output gradient with the flipped kernel. It needs no copy of the input (autograd's makes the
    input contiguous first, a full copy for a channel slice such as the first focal level's), and oneDNN's forward
    kernel is at least as fast as its backward-data one here."""
    return F.conv2d(grad_out, weight.flip(-1, -2), padding=weight.shape[-1] // 2, groups=weight.shape[0])


class _DepthwiseConv(torch.autograd.Function):
    """``F.conv2d(x, weight, padding=k//2, groups=C)`` (odd k, stride 1) with :func:`input_grad` and, from
    ``STRIPS_FROM`` on, the strip weight gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's context
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=weight.shape[-1] // 2, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad_x = input_grad(grad_out, weight) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            k = weight.shape[-1]
            grad_w = strip_weight_grad(x, grad_out, k) if k >= STRIPS_FROM else default_weight_grad(x, grad_out, weight)
            if grad_w.stride() != weight.stride():
                # The same values in the parameter's strides (a C*k*k copy): DDP's reducer compares every stride,
                # size-1 dims too, with its bucket's, which are the parameter's, and warns on each step otherwise.
                grad_w = torch.empty_like(weight).copy_(grad_w)
        return grad_x, grad_w


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depth-wise, stride-1 convolution with 'same' padding of an odd kernel (weight (C, 1, k, k)); on CPU, when
    autograd needs a gradient, through :class:`_DepthwiseConv`, elsewhere (and under torch.compile) ``F.conv2d``.
    Under autocast both operands are cast to the autocast dtype first, as autocast does for ``F.conv2d``."""
    custom = (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and not torch.compiler.is_compiling()
    )
    if not custom:
        return F.conv2d(x, weight, padding=weight.shape[-1] // 2, groups=weight.shape[0])
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseConv.apply(x.to(dtype), weight.to(dtype))
    return _DepthwiseConv.apply(x, weight)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(dim, dim, k, padding=k//2, groups=dim, bias=False)`` (the same parameters and state dict) whose
    training backward is :class:`_DepthwiseConv`'s (odd k)."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size[0] % 2 == 0:  # even kernels: 'same' padding is asymmetric; not the strip's case
            return super().forward(x)
        return depthwise_conv2d(x, self.weight)
