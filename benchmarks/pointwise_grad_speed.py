"""1×1 convolution backward: autograd's one oneDNN call vs the gradients asked for apart vs MKL products, per
FocalNet-T projection, then in the model's train step (where ``focalbench.models.pointwise`` picks per shape).

    python benchmarks/pointwise_grad_speed.py                 # FocalNet-T's 20 projection shapes at batch 8, 224 px
    python benchmarks/pointwise_grad_speed.py --malloc retain # glibc keeps freed memory: no page faults
    python benchmarks/pointwise_grad_speed.py --precision bf16  # the whole-step comparison under bf16 autocast

For ``y = conv1x1(x, W) + b`` autograd makes one ``aten.convolution_backward`` call for the input, weight and bias
gradients. Candidates, each checked against it before timing:

* ``one_call``: that call (what the model runs);
* ``apart``: oneDNN's backward-data and backward-weights kernels in two calls, the bias gradient as a plain sum;
* ``mkl``: ``grad_x = g·W`` and ``grad_W = gᵀ·x`` as MKL products over the channels_last (N·H·W, C) views.

Per shape: the median milliseconds of each (models' shapes at ``--batch-size`` and ``--image-size``), then the sum
over the network (each shape times its number of blocks). Last, whole train steps of our FocalNet-T, timed in turn
(what a candidate saves alone need not survive inside the step): the model as it is (each 1×1 layer's forward and
backward on the library its first calls timed faster, ``focalbench.models.pointwise``), the same weights on
PyTorch's own convolution (oneDNN throughout), and every 1×1 backward taken ``apart`` (a drop-in autograd function
here).
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from backbone_speed import (
    add_timing_arguments,
    apply_malloc_setting,
    batch,
    build,
    interleaved,
    load_average,
    malloc_setting,
    train_step,
)
from torch import nn

from focalbench.models.pointwise import PointwiseConv2d, backward_mkl, backward_onednn

_conv_backward = torch.ops.aten.convolution_backward.default
_ARGS = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)  # stride, padding, dilation, transposed, output padding, groups
STAGES = [(96, 56, 2), (192, 28, 2), (384, 14, 6), (768, 7, 2)]  # FocalNet-T at 224 px: (C, H = W, blocks)


def projections(dim: int) -> dict[str, tuple[int, int]]:
    """(in, out) channels of a block's 1×1 convolutions (focal level 2)."""
    return {"f": (dim, 2 * dim + 3), "h": (dim, dim), "proj": (dim, dim), "fc1": (dim, 4 * dim), "fc2": (4 * dim, dim)}


def one_call(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return backward_onednn(g, x, w, [True, True, True])


def apart(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    grad_x = _conv_backward(g, x, w, None, *_ARGS, [True, False, False])[0]
    grad_w = _conv_backward(g, x, w, None, *_ARGS, [False, True, False])[1]
    return grad_x, grad_w, g.sum((0, 2, 3))


def mkl(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return backward_mkl(g, x, w, [True, True, True])


CANDIDATES = {"one_call": one_call, "apart": apart, "mkl": mkl}


class _Apart(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        return apart(g, *ctx.saved_tensors)


class ApartConv(nn.Conv2d):
    """A 1×1 ``nn.Conv2d`` whose backward is :func:`apart` (set as the ``__class__`` of the model's own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Apart.apply(x, self.weight, self.bias)


def _with_class(model: nn.Module, new_class: type, selected) -> tuple[nn.Module, int]:  # noqa: ANN001
    model = copy.deepcopy(model)
    count = 0
    for name, module in model.named_modules():
        if selected(name, module):
            module.__class__ = new_class
            count += 1
    return model, count


def with_apart_backward(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose 1×1 convolutions with bias inside the stages take :class:`ApartConv`'s backward."""
    return _with_class(
        model,
        ApartConv,
        lambda name, m: (
            isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.bias is not None and "layers" in name
        ),
    )


def with_plain_convolutions(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose :class:`PointwiseConv2d` layers are PyTorch's ``nn.Conv2d`` (oneDNN throughout)."""
    return _with_class(model, nn.Conv2d, lambda name, m: isinstance(m, PointwiseConv2d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--model", default="focalnet_tiny_srf", help="our variant for the whole-step comparison")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="of the whole-step comparison (bf16: autocast)"
    )
    add_timing_arguments(parser, warmup=2, repeats=9, clock=False)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    apply_malloc_setting(args)
    scale = args.image_size / 224
    print(f"# CPU, {args.threads} threads; fp32; batch {args.batch_size}; {args.image_size} px; median of "
          f"{args.repeats}; {malloc_setting(args)}; {load_average()}")  # fmt: skip
    print(f"{'shape':<26}" + "".join(f"{name:>12}" for name in CANDIDATES) + "   (ms a call)")
    totals = dict.fromkeys(CANDIDATES, 0.0)
    for dim, size, blocks in STAGES:
        side = max(1, round(size * scale))
        for name, (c_in, c_out) in projections(dim).items():
            torch.manual_seed(0)
            x = torch.randn(args.batch_size, c_in, side, side).contiguous(memory_format=torch.channels_last)
            g = torch.randn(args.batch_size, c_out, side, side).contiguous(memory_format=torch.channels_last)
            w = torch.randn(c_out, c_in, 1, 1)
            reference = one_call(g, x, w)
            for candidate, fn in CANDIDATES.items():
                for got, want in zip(fn(g, x, w), reference):
                    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item(), msg=candidate)
            times = interleaved({k: (lambda fn=fn, g=g, x=x, w=w: fn(g, x, w)) for k, fn in CANDIDATES.items()}, args)
            for candidate, seconds in times.items():
                totals[candidate] += 1e3 * seconds * blocks
            label = f"{name} {c_in}->{c_out} @{side}x{side}"
            print(f"{label:<26}" + "".join(f"{1e3 * times[k]:12.2f}" for k in CANDIDATES))
    print(f"{'a step (x blocks)':<26}" + "".join(f"{totals[k]:12.1f}" for k in CANDIDATES))
    print("  " + ", ".join(f"{k} {totals['one_call'] / totals[k]:.2f}x" for k in CANDIDATES) + " of one_call's speed")

    model = build(args.model)
    split, count = with_apart_backward(model)
    plain, _ = with_plain_convolutions(model)
    args.channels_last = False  # batch's setting: backbone_speed's default
    x, y = batch(args)
    nets = {"pytorch": plain, "apart": split, "autotuned": model}
    if args.precision == "bf16":
        del nets["apart"]  # its autograd function takes no autocast casts
    times = interleaved({label: train_step(net, args.model, x, y, args) for label, net in nets.items()}, args)
    others = [("backward apart", "apart"), ("autotuned (the model)", "autotuned")]
    print(
        f"{args.precision} train step of {args.model}, {count} 1x1 convolutions: "
        f"{1e3 * times['pytorch']:.0f} ms on PyTorch's convolution; "
        + "; ".join(
            f"{label} {1e3 * times[key]:.0f} ms, {times['pytorch'] / times[key]:.2f}x"
            for label, key in others
            if key in times
        )
    )


if __name__ == "__main__":
    main()
