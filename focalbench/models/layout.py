"""Keeping the backward pass in the forward's memory layout (``channels_last``)."""

from __future__ import annotations

import torch


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient in ``channels_last``.

    Some backwards produce NCHW-contiguous gradients whatever the forward's layout: a concatenation (the backward
    of ``split``, as of FocalModulation's ``f`` output) and an expand (the backward of a global average pool). A
    channels_last convolution or GELU then gets a mixed-layout gradient and takes a slow path (GELU backward 4.5x
    slower on this project's CPU); one copy at such a point keeps the rest of the backward in one layout.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's context
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad.contiguous(memory_format=torch.channels_last)


def channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """``x``, with its gradient made ``channels_last`` when ``x`` is (see :class:`_ChannelsLastGrad`)."""
    if x.requires_grad and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return _ChannelsLastGrad.apply(x)
    return x
