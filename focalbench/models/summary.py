"""Parameters and FLOPs of every FocalNet variant beside the paper's table.

    python -m focalbench.models.summary                 # T/S/B srf/lrf at 224
    python -m focalbench.models.summary --all           # every registered variant (large ones at their size)
    python -m focalbench.models.summary focalnet_tiny_lrf --input-size 384

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward on the meta device (no memory,
no time) and reported as GFLOPs = multiply-accumulates / 1e9, the convention of the paper's table (and of fvcore).
The counter covers convolutions and matmuls; element-wise work (GELU, LayerNorm, the gated sum) is not counted,
as in the paper.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from focalbench.models.factory import create_model
from focalbench.models.variants import VARIANTS, get_variant

DEFAULT = [f"focalnet_{s}_{rf}" for s in ("tiny", "small", "base") for rf in ("srf", "lrf")]


def count(name: str, input_size: int | None = None) -> dict:
    """``{"params_m", "gmacs"}`` of a variant's classifier at ``input_size`` (default: the variant's own)."""
    variant = get_variant(name)
    size = input_size or variant.input_size
    with torch.device("meta"):
        model = create_model(name, num_classes=variant.num_classes).eval()
        x = torch.empty(1, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gmacs": counter.get_total_flops() / 2 / 1e9,  # the counter reports 2 FLOPs per multiply-accumulate
        "input_size": size,
    }


def table(names: Sequence[str], input_size: int | None = None) -> str:
    """The report: one row per variant, the paper's params / GFLOPs / ImageNet-1K top-1 beside ours where known."""
    header = f"{'variant':<20} {'size':>5} {'params (M)':>11} {'paper':>7} {'GFLOPs':>8} {'paper':>7} {'top-1':>6}"
    note = (
        "# GFLOPs = multiply-accumulates / 1e9, as the paper counts them: FlopCounterMode's FLOPs / 2 for one image"
        " at 'size' px\n#   (convolutions and matmuls only); 'paper' and 'top-1': the paper's ImageNet-1K table"
    )
    lines = [note, header, "-" * len(header)]
    for name in names:
        got, paper = count(name, input_size), get_variant(name).paper
        lines.append(
            f"{name:<20} {got['input_size']:>5} {got['params_m']:>11.2f} {paper.get('params_m', '-'):>7} "
            f"{got['gmacs']:>8.2f} {paper.get('gflops', '-'):>7} {paper.get('top1', '-'):>6}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="variants (default: T/S/B srf/lrf)")
    parser.add_argument("--all", action="store_true", help="every registered variant")
    parser.add_argument("--input-size", type=int, default=None)
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.all else (args.names or DEFAULT)
    print(table(names, args.input_size))


if __name__ == "__main__":
    main()
