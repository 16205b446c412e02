"""Where a train step's (or forward's) time goes, by kind of operation: our FocalNet vs timm's, in one process.

    python benchmarks/step_breakdown.py                          # FocalNet-T SRF, fp32 train step, CPU, 2 threads
    python benchmarks/step_breakdown.py --models focalnet_tiny_lrf timm:focalnet_tiny_lrf --precision bf16
    python benchmarks/step_breakdown.py --forward                # the inference forward (ours: fused oneDNN path)

The step is ``backbone_speed.py``'s (same models, batch, drop path, fused AdamW). Every ATen call in it is timed
through a ``TorchDispatchMode`` and added to its kind: 1x1 convolutions (forward, backward; with those that
``focalbench.models.pointwise`` runs as MKL matrix products, and the head's), depth-wise ones, other convolutions
(patch embeddings), GELU, LayerNorm, element-wise ops and copies, the optimizer's update. "outside ATen" is the
step's wall time minus its calls': Python, the autograd engine, and the mode's own cost (a few us a
call, the same for both models). The 1x1 convolutions' FLOP rates (2 x N x H x W x C_in x C_out forward, twice
that backward) are set against the machine's matmul peak, measured first as in ``backbone_speed.py``. Figures are
mean ms per step over ``--repeats`` steps after ``--warmup``, the models in turn within each round. Unlike
``torch.profiler``, which inflates short element-wise calls several-fold on this project's CPU, the mode adds the
same small cost to every call, so the kinds compare as they run.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable

import torch
from backbone_speed import (
    add_timing_arguments,
    apply_malloc_setting,
    autocast,
    batch,
    build,
    load_average,
    malloc_setting,
    matmul_peak,
    prepare,
)
from torch.utils._python_dispatch import TorchDispatchMode

from focalbench.tasks.optim import default_optimizer  # not .base: that imports Lightning

KINDS = [
    "1x1 conv forward", "1x1 conv backward", "depth-wise conv", "other conv", "GELU", "LayerNorm",
    "element-wise, copies", "optimizer", "other ATen",
]  # fmt: skip
ELEMENTWISE = {
    "add", "add_", "addcmul", "addcmul_", "mul", "mul_", "div", "div_", "sub", "sum", "mean", "copy_", "cat", "clone",
    "zero_", "fill_", "bernoulli_", "slice_backward", "expand", "where", "empty_like", "_to_copy",
}  # fmt: skip
_CONV_ARGS = {  # (input, weight) positions of each convolution op (under inference_mode the mode sees aten.conv2d)
    "aten.conv2d.default": (0, 1),
    "aten.convolution.default": (0, 1),
    "aten.convolution_backward.default": (1, 2),  # (grad_output, input, weight, ..., output_mask)
    "mkldnn._convolution_pointwise.default": (0, 1),
    "mkldnn._convolution_pointwise.binary": (0, 2),  # (input, other, weight, ...)
    "mkldnn._convolution_pointwise_.binary": (1, 2),  # in place: (other, input, weight, ...)
}


def conv_kind(name: str, args: tuple) -> tuple[str, float]:
    """A convolution call's kind and, for a 1x1 one, its FLOP count: 2 x N x H x W x C_in x C_out for the forward
    and for each of the input and weight gradients a backward call computes."""
    input_at, weight_at = _CONV_ARGS[name]
    weight = args[weight_at]
    if weight.shape[1] == 1 and weight.shape[0] > 1:
        return "depth-wise conv", 0.0
    if weight.shape[-2:] != (1, 1):
        return "other conv", 0.0
    flop = 2.0 * args[input_at].numel() * weight.shape[0]
    if "backward" in name:
        return "1x1 conv backward", flop * (int(args[-1][0]) + int(args[-1][1]))
    return "1x1 conv forward", flop


def product_kind(args: tuple) -> tuple[str, float]:
    """A matrix product's kind and FLOPs (2·M·K·N): a 1x1 convolution taken as an MKL product
    (``focalbench.models.pointwise``; the classifier head's ``Linear`` counts here too), forward or backward by
    whether the autograd engine is running a backward node."""
    a, b = args[-2:]
    phase = "backward" if torch._C._current_autograd_node() is not None else "forward"
    return f"1x1 conv {phase}", 2.0 * a.shape[0] * a.shape[1] * b.shape[1]


class KindTimer(TorchDispatchMode):
    """Adds each ATen call's wall time (and a 1x1 convolution's FLOPs) to its kind; ``phase`` "optimizer" makes
    every call count as the optimizer's."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: Counter[str] = Counter()
        self.flop: Counter[str] = Counter()
        self.phase = "model"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - the dispatcher's signature
        start = time.perf_counter()
        result = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        name = str(func)
        op = name.split(".")[1]
        flop = 0.0
        if self.phase == "optimizer":
            kind = "optimizer"
        elif name in _CONV_ARGS:
            kind, flop = conv_kind(name, args)
        elif op in ("mm", "addmm"):
            kind, flop = product_kind(args)
        elif "gelu" in op:
            kind = "GELU"
        elif "layer_norm" in op:
            kind = "LayerNorm"
        elif op in ELEMENTWISE:
            kind = "element-wise, copies"
        else:
            kind = "other ATen"
        self.seconds[kind] += elapsed
        self.flop[kind] += flop
        return result


def timed_step(model: torch.nn.Module, spec: str, args) -> Callable[[KindTimer], float]:
    """One train step (or inference forward) under a timer; returns its wall time."""
    x, y = batch(args)
    optimizer = None if args.forward else default_optimizer(model.parameters())  # backbone_speed's fused AdamW

    def step(timer: KindTimer) -> None:
        if optimizer is None:
            with torch.inference_mode(), autocast(args, spec):
                model(x)
            return
        with autocast(args, spec):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        timer.phase = "optimizer"
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.phase = "model"

    def run(timer: KindTimer) -> float:
        start = time.perf_counter()
        with timer:
            step(timer)
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs=2, default=["focalnet_tiny_srf", "timm:focalnet_tiny_srf"])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--forward", action="store_true", help="an inference forward instead of a train step")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--drop-path", type=float, default=0.1)
    add_timing_arguments(parser, warmup=2, repeats=4, clock=False)  # the calls' wall times add up to the step's
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error(
            "--device cpu only: CUDA calls return before their kernels finish, so they cannot be timed one by one"
        )
    args.channels_last = args.compile = args.grad_checkpointing = False  # backbone_speed.py's defaults
    apply_malloc_setting(args)
    torch.set_num_threads(args.threads)

    peak = matmul_peak(args, args.precision)
    what = "inference forward" if args.forward else "train step"
    print(
        f"# CPU, {args.threads} threads; {args.precision} {what}; batch {args.batch_size}; {args.image_size} px; "
        f"mean of {args.repeats}; matmul peak {peak:.0f} GFLOP/s (measured now); {malloc_setting(args)}; "
        f"{load_average()}"
    )
    steps = {}
    for spec in args.models:
        model = prepare(build(spec, args.drop_path), args)
        steps[spec] = timed_step(model.eval() if args.forward else model.train(), spec, args)
    timers = {spec: KindTimer() for spec in args.models}
    wall: Counter[str] = Counter()
    for round_ in range(args.warmup + args.repeats):
        for spec, run in steps.items():
            timer = timers[spec] if round_ >= args.warmup else KindTimer()
            seconds = run(timer)
            if round_ >= args.warmup:
                wall[spec] += seconds
    ours, peer = args.models
    print(f"{'ms per step':<24} {ours:>22} {peer:>24} {'difference':>11}")
    for kind in KINDS:
        a, b = (1e3 * timers[s].seconds[kind] / args.repeats for s in args.models)
        if a or b:
            print(f"{kind:<24} {a:>22.1f} {b:>24.1f} {a - b:>+11.1f}")
    outside = [1e3 * (wall[s] - sum(timers[s].seconds.values())) / args.repeats for s in args.models]
    print(f"{'outside ATen':<24} {outside[0]:>22.1f} {outside[1]:>24.1f} {outside[0] - outside[1]:>+11.1f}")
    totals = [1e3 * wall[s] / args.repeats for s in args.models]
    print(f"{'whole step':<24} {totals[0]:>22.1f} {totals[1]:>24.1f} {totals[0] - totals[1]:>+11.1f}")
    print(f"\nspeed ratio, {ours} / {peer}: {totals[1] / totals[0]:.2f}x")
    for kind in ("1x1 conv forward", "1x1 conv backward"):
        rates = [
            timers[spec].flop[kind] / timers[spec].seconds[kind] / 1e9
            for spec in args.models
            if timers[spec].seconds[kind]
        ]
        if len(rates) == 2:
            shares = "; ".join(
                f"{spec} {rate:.0f} GFLOP/s ({100 * rate / peak:.0f} %)" for spec, rate in zip(args.models, rates)
            )
            print(f"{kind} rate: {shares} of the peak")


if __name__ == "__main__":
    main()
