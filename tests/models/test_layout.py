"""The layout-keeping backwards (``focalbench.models.layout``) give autograd's gradients, in channels_last."""

from __future__ import annotations

import torch

from focalbench.models.layout import global_mean, split_channels


def _channels_last(*shape: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, generator=generator)
    return x.contiguous(memory_format=torch.channels_last).requires_grad_()


def test_split_channels_gradient_is_autograds_and_channels_last():
    x = _channels_last(2, 7, 3, 5)
    assert torch.autograd.gradcheck(lambda t: split_channels(t, (3, 3, 1)), (x,))
    assert torch.autograd.gradcheck(lambda t: split_channels(t, (3, 3, 1))[1], (x,))  # q and gates unused
    q, ctx, gates = split_channels(x, (3, 3, 1))
    (q * 2).sum().backward()  # ctx and gates unused: their part of the gradient is zero
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    expected = torch.zeros_like(x)
    expected[:, :3] = 2
    torch.testing.assert_close(x.grad, expected)


def test_global_mean_gradient_is_autograds_and_expands_without_copying():
    x = _channels_last(2, 4, 3, 5)
    assert torch.autograd.gradcheck(global_mean, (x,))
    grads = []
    x.register_hook(grads.append)
    global_mean(x).sum().backward()
    assert grads[0].stride()[2:] == (0, 0)  # an expanded view of the (N, C, 1, 1) gradient, not a new map
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 15))


def test_no_grad_takes_the_plain_ops():
    x = _channels_last(1, 4, 2, 2).detach()
    assert split_channels(x, (2, 2))[0].grad_fn is None and global_mean(x).grad_fn is None
