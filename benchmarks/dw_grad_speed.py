"""Depth-wise convolution weight gradient: autograd's default vs the candidate formulations, per kernel size.

    python benchmarks/dw_grad_speed.py                        # fp32 and bf16, channels_last and contiguous, k 3..13
    python benchmarks/dw_grad_speed.py --threads 1 --shapes 8x96x56x56 --kernels 5 7 --precisions bf16

The weight gradient of a depth-wise k×k convolution (stride 1, padding k//2) of x with output gradient g is
``grad_w[c, i, j] = Σ_{n,h,w} x[n, c, h+i-p, w+j-p] · g[n, c, h, w]``. Candidates:

* ``default``: ``aten.convolution_backward`` (what autograd runs; oneDNN's generic grouped kernel for k > 3);
* ``strips``: :func:`focalbench.models.dwconv.strip_weight_grad`, ceil(k/3) k×3 strips through oneDNN's depth-wise
  kernel over column-shifted views of a padded copy (what the focal levels use for k > 3);
* ``dw_swap``: a depth-wise *forward* convolution (oneDNN's fast kernel at any size) of one tall image per channel,
  the batch stacked with zero rows between images, with the output gradient stacked alike as its kernel;
* ``group_swap``: a grouped convolution with batch and channels swapped (groups C, the batch as each group's
  input channels);
* ``unfold``: ``F.unfold`` of the padded input to k² rows per channel, then a batched matrix-vector product;
* ``shifted``: the sum of k² shifted products (one reduction over the whole tensor per kernel tap).

Each case times the candidates in turn within each round (``--repeats`` rounds after ``--warmup``) and prints
the minimum and median milliseconds and each candidate's speed-up over ``default`` (min-based), plus the load
average at the start and the end, since the machine may be shared. It checks every candidate against ``default``
before timing it (relative error printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from focalbench.models.dwconv import default_weight_grad, strip_weight_grad


def dw_swap(x: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = x.shape
    p, hp = k // 2, h + 2 * k // 2
    # one tall image per channel: the images stacked with p zero rows around each (so no kernel row reaches into
    # the next image), channels_last; g likewise as the (N·hp)×W kernel; the output is the k×k weight gradient
    xs, gs = x.new_zeros(n, hp, w, c), g.new_zeros(n, hp, w, c)
    xs[:, p : p + h], gs[:, p : p + h] = x.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)
    out = F.conv2d(
        xs.view(1, n * hp, w, c).permute(0, 3, 1, 2), gs.view(n * hp, w, c, 1).permute(2, 3, 0, 1), padding=p, groups=c
    )
    return out.view(c, 1, k, k)


def group_swap(x: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = x.shape
    xs = x.transpose(0, 1).reshape(1, c * n, h, w)
    out = F.conv2d(xs, g.transpose(0, 1).contiguous(), padding=k // 2, groups=c)
    return out.view(c, 1, k, k)


def unfold(x: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).view(n, c, k * k, h * w)  # (n, c, k², hw)
    out = torch.einsum("ncqr,ncr->cq", cols, g.reshape(n, c, h * w))
    return out.view(c, 1, k, k)


def shifted(x: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    n, c, h, w = x.shape
    p = k // 2
    xp = F.pad(x, (p, p, p, p))
    out = x.new_empty(c, k, k)
    for i in range(k):
        for j in range(k):
            out[:, i, j] = (xp[:, :, i : i + h, j : j + w] * g).sum((0, 2, 3))
    return out.unsqueeze(1)


CANDIDATES = {
    "default": lambda x, g, k: default_weight_grad(x, g, x.new_empty(x.shape[1], 1, k, k)),
    "strips": strip_weight_grad,
    "dw_swap": dw_swap,
    "group_swap": group_swap,
    "unfold": unfold,
    "shifted": shifted,
}


def interleaved(fns: dict, warmup: int, repeats: int, clock=time.perf_counter) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(1e3 * (clock() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["8x96x56x56", "1x96x128x128"], help="NxCxHxW of x")
    parser.add_argument("--kernels", nargs="+", type=int, default=[3, 5, 7, 9, 11, 13])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--layouts", nargs="+", choices=["channels_last", "contiguous"], default=["channels_last"])
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this thread's CPU time (with --threads 1; "
        "robust to other processes taking the cores, not to their use of the caches)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    names = ["default"] + [c for c in args.candidates if c != "default"]
    load = os.getloadavg()[0]
    print(f"# CPU, {args.threads} threads; {args.clock} clock; min / median of {args.repeats} ms; load {load:.1f}")
    print(f"{'shape':<14} {'prec':<5} {'layout':<14} {'k':>3} " + " ".join(f"{n:>20}" for n in names))
    for shape in args.shapes:
        n, c, h, w = map(int, shape.split("x"))
        for precision in args.precisions:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            for layout in args.layouts:
                memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                torch.manual_seed(0)
                x = torch.randn(n, c, h, w, dtype=dtype).contiguous(memory_format=memory_format)
                g = torch.randn(n, c, h, w, dtype=dtype).contiguous(memory_format=memory_format)
                for k in args.kernels:
                    fns = {name: (lambda f=CANDIDATES[name], x=x, g=g, k=k: f(x, g, k)) for name in names}
                    reference = fns["default"]().float()
                    errors = {
                        name: ((fn().float() - reference).abs().max() / reference.abs().max()).item()
                        for name, fn in fns.items()
                    }
                    times = interleaved(fns, args.warmup, args.repeats, clock)
                    best = {name: min(t) for name, t in times.items()}
                    cells = [
                        f"{best[m]:7.2f}/{statistics.median(times[m]):7.2f} {best['default'] / best[m]:4.1f}x"
                        for m in names
                    ]
                    print(f"{shape:<14} {precision:<5} {layout:<14} {k:>3} " + " ".join(f"{c:>20}" for c in cells))
                    worst = max(errors.values())
                    if worst > (1e-2 if dtype == torch.bfloat16 else 1e-4):
                        print(f"    relative errors vs default: {errors}")
    print(f"# load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
