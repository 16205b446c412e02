"""Keeping the backward pass in the forward's memory layout (``channels_last``) without extra passes.

Two backwards of autograd's own produce NCHW-contiguous gradients whatever the forward's layout: a split's (it
concatenates the pieces' gradients) and a global average pool's (it materialises the expanded gradient). A
channels_last convolution or GELU then gets a mixed-layout gradient and takes a slow path (GELU backward 4.5x
slower on this project's CPU), and a copy back to channels_last costs a pass over the tensor. The two functions
here give the same values with backwards that keep the layout and make no NCHW intermediate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _plain(x: torch.Tensor) -> bool:
    """Where autograd's own ops serve: no gradient wanted, or under torch.compile (inductor picks layouts itself)."""
    return not (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling()


class _SplitChannels(torch.autograd.Function):
    """``x.split(sizes, dim=1)`` whose backward writes the pieces' gradients straight into one buffer laid out as
    ``x`` (autograd's concatenates them NCHW-contiguous). An unused piece's gradient arrives as None (not
    materialised as zeros) and only its channels of the buffer are zeroed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
        ctx.set_materialize_grads(False)
        ctx.sizes = list(sizes)
        ctx.memory_format = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        return x.split(ctx.sizes, dim=1)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        reference = next((g for g in grads if g is not None), None)
        if reference is None:
            return None, None
        n, _, h, w = reference.shape
        size, like = (n, sum(ctx.sizes), h, w), {"dtype": reference.dtype, "device": reference.device}
        grad = torch.empty(size, memory_format=ctx.memory_format, **like)
        start = 0
        for size, piece in zip(ctx.sizes, grads):
            if piece is None:
                grad[:, start : start + size].zero_()
            else:
                grad[:, start : start + size] = piece
            start += size
        return grad, None


class _GlobalMean(torch.autograd.Function):
    """``x.mean((2, 3), keepdim=True)`` whose backward returns the gradient as an expanded view (no pass over
    memory); autograd's materialises it NCHW-contiguous."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.shape = x.shape
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return (grad / (ctx.shape[2] * ctx.shape[3])).expand(ctx.shape)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def split_channels(x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """``x.split(sizes, dim=1)`` with the layout-keeping backward of :class:`_SplitChannels`."""
    return x.split(list(sizes), dim=1) if _plain(x) else _SplitChannels.apply(x, sizes)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3), keepdim=True)`` with the pass-free backward of :class:`_GlobalMean`."""
    return x.mean((2, 3), keepdim=True) if _plain(x) else _GlobalMean.apply(x)
