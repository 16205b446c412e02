"""AdamW's step on a model's parameters: PyTorch's default implementation vs ``foreach`` vs ``fused``, in one process.

    python benchmarks/optimizer_speed.py                          # FocalNet-T's parameters, CPU, 2 threads
    python benchmarks/optimizer_speed.py --model focalnet_base_lrf --device cuda --threads 16

The configs (and the tasks' default optimizer) set ``fused: true``. On CPU, PyTorch's default AdamW is a Python
loop over the parameters (``foreach`` is its default only on CUDA), a few element-wise kernels per tensor; ``fused``
updates every tensor of a group in one kernel. The parameters get fixed random gradients and the weight-decay
groups of the workbench (``param_groups``: no decay on norms and biases). Each figure is the median of
``--repeats`` steps after ``--warmup``, the variants timed in turn within each round (``interleaved``, as in
``backbone_speed.py``). The ratios divide the default's step time by each variant's.
"""

from __future__ import annotations

import argparse
from copy import deepcopy

import torch
from backbone_speed import add_timing_arguments, apply_malloc_setting, interleaved, load_average, malloc_setting

from focalbench.models import create_model
from focalbench.tasks.optim import param_groups

VARIANTS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def optimizers(model: torch.nn.Module, device: str) -> dict[str, torch.optim.Optimizer]:
    """One AdamW per variant over its own copy of ``model``'s parameters, with the same fixed gradients."""
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=generator).mul_(1e-3) for p in model.parameters()]
    built = {}
    for name, kwargs in VARIANTS.items():
        copy = deepcopy(model).to(device)
        for p, g in zip(copy.parameters(), grads):
            p.grad = g.to(device)
        built[name] = torch.optim.AdamW(param_groups(copy, [], None), lr=1e-4, weight_decay=0.05, **kwargs)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="focalnet_tiny_srf", help="a FocalNet variant")
    add_timing_arguments(parser, warmup=3, repeats=15)
    args = parser.parse_args()
    apply_malloc_setting(args)
    torch.set_num_threads(args.threads)

    model = create_model(args.model)
    count = sum(p.numel() for p in model.parameters())
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"# {device}; AdamW over {args.model}'s {count / 1e6:.1f} M parameters; median of {args.repeats}; "
          f"{malloc_setting(args)}; {load_average()}")  # fmt: skip

    built = optimizers(model, args.device)
    seconds = interleaved({name: optimizer.step for name, optimizer in built.items()}, args)  # it synchronizes
    for name, value in seconds.items():
        print(f"  {name:<8} {1e3 * value:8.1f} ms per step   {seconds['default'] / value:5.2f}x the default's speed")


if __name__ == "__main__":
    main()
