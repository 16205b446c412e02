"""Dense-task inference speed: our FocalNet vs timm backbones under the same detection head, in one process.

    python benchmarks/dense_speed.py          # CPU, 2 threads, one 512x768 image, FocalNet-T (window 9) vs Swin-T
    python benchmarks/dense_speed.py --device cuda --size 800 1216 --threads 16
    python benchmarks/dense_speed.py --backbones focalnet_tiny_lrf swin_tiny_patch4_window7_224 convnext_tiny

Each backbone comes from :func:`build_backbone` (FocalNet variants with ``focal_windows=9``, the paper's dense-task
setting; timm models with ``features_only``, Swin with ``dynamic_img_size`` since timm's Swin otherwise accepts only
its 224 px training size) and runs under every entry of ``HEADS``: the bare backbone and torchvision's Mask R-CNN +
FPN (eval, 81 classes, ``box_score_thresh=0`` so that random weights still keep the full 100 detections per image
and every model pays for the same mask head). Random weights, fp32, ``inference_mode``. Each figure is the median
of ``--repeats`` timed runs after ``--warmup`` untimed ones, the models timed in turn within each round so a change
of machine load hits all of them alike. The ratios divide the first backbone's speed (img/s) by each other's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from focalbench.models import VARIANTS, build_backbone
from focalbench.models.detection import build_mask_rcnn

DEFAULT_BACKBONES = ["focalnet_tiny_srf", "swin_tiny_patch4_window7_224"]


def backbone_kwargs(name: str) -> dict:
    if name in VARIANTS:
        return {"focal_windows": 9}  # the paper's detection / segmentation backbones
    if name.startswith("swin"):
        return {"dynamic_img_size": True}
    return {}


def bare(backbone: nn.Module, args) -> Callable[[torch.Tensor], object]:
    return lambda image: backbone(image[None])


def mask_rcnn(backbone: nn.Module, args) -> Callable[[torch.Tensor], object]:
    height, width = args.size
    model = (
        build_mask_rcnn(backbone, 81, min_size=min(height, width), max_size=max(height, width), box_score_thresh=0.0)
        .to(args.device)
        .eval()
    )
    return lambda image: model([image])


# Head name -> (backbone, args) -> a function of one 3xHxW image in [0, 1]. A segmentation head (UPerNet) plugs in
# here the same way.
HEADS: dict[str, Callable[[nn.Module, argparse.Namespace], Callable[[torch.Tensor], object]]] = {
    "backbone": bare,
    "mask_rcnn": mask_rcnn,
}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], args) -> dict[str, float]:
    """Median seconds per function over ``args.repeats`` rounds, each function timed once per round."""
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            synchronize(args.device)
            start = time.perf_counter()
            fn()
            synchronize(args.device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES, help="FocalNet variants or timm names")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--size", nargs=2, type=int, default=[512, 768], metavar=("H", "W"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    image = torch.rand(3, *args.size, device=args.device)
    backbones = {name: build_backbone(name, **backbone_kwargs(name)).to(args.device).eval() for name in args.backbones}
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"# {device}; fp32; one {args.size[0]}x{args.size[1]} image; median of {args.repeats} after {args.warmup}")
    print(f"{'head':<10} {'backbone':<32} {'s/img':>8} {'img/s':>8}")
    for head in args.heads:
        fns = {}
        for name, backbone in backbones.items():
            torch.manual_seed(0)  # the same head weights for every backbone
            fns[name] = lambda run=HEADS[head](backbone, args): _inference(run, image)
        seconds = interleaved(fns, args)
        for name, s in seconds.items():
            print(f"{head:<10} {name:<32} {s:>8.3f} {1 / s:>8.2f}")
        ours = args.backbones[0]
        for name in args.backbones[1:]:
            print(f"  {head}: {ours} runs at {seconds[name] / seconds[ours]:.2f}x the speed of {name}")


def _inference(run: Callable[[torch.Tensor], object], image: torch.Tensor) -> object:
    with torch.inference_mode():
        return run(image)


if __name__ == "__main__":
    main()
