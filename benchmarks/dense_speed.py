"""Dense-task inference speed: our FocalNet vs timm backbones under the same detection head, in one process.

    python benchmarks/dense_speed.py          # CPU, 2 threads: Mask R-CNN on one 512x768 image, UPerNet on 512x512
    python benchmarks/dense_speed.py --device cuda --size 800 1216 --threads 16
    python benchmarks/dense_speed.py --backbones focalnet_tiny_lrf swin_tiny_patch4_window7_224 convnext_tiny
    python benchmarks/dense_speed.py --heads mask_rcnn dino --size 800 1216 --train   # + a train step each
    python benchmarks/dense_speed.py --backbones focalnet_tiny_lrf swin_tiny_patch4_window7_224 \
        --heads mask2former --train          # Mask2Former at 512x512: forward and training step
    python benchmarks/dense_speed.py --backbones focalnet_tiny_srf timm:focalnet_tiny_srf --heads upernet \
        mask_rcnn --size 800 1216 --train    # training steps vs timm's FocalNet-T at the same focal window 9

Each backbone comes from :func:`build_backbone` (FocalNet variants with ``focal_windows=9``, the paper's dense-task
setting; timm models with ``features_only``, Swin with ``dynamic_img_size`` since timm's Swin otherwise accepts only
its 224 px training size; ``timm:NAME`` is timm's own FocalNet, built with the same ``focal_windows=9``) and runs
under every entry of ``HEADS``: the bare backbone and torchvision's Mask R-CNN + FPN (eval, 81 classes,
``box_score_thresh=0`` so that random weights still keep the full 100 detections per image and every model pays for
the same mask head) on ``--size``, and UPerNet (150 classes, 512 channels, as for ADE20K) on a ``--seg-size``
square, transformers' Mask2Former with the ADE20K recipe's head (150 classes, 100 queries, 10 decoder / 6 encoder
layers) on the same square, and DINO-4scale (:mod:`focalbench.models.dino`: 900 queries, 6 + 6 layers, 80 classes,
top-300 post-processing) on ``--size``. With ``--train``, the detectors, UPerNet and Mask2Former also time one
training step (forward with losses, backward, AdamW) on one image: 10 fixed boxes for the detectors (DINO's step
includes its 100 denoising queries), 8 fixed random segments for Mask2Former, a fixed random label map for UPerNet
(cross-entropy of the main head + 0.4 x the auxiliary one, as the ADE20K recipe; two copies of the image per step,
see ``TRAIN_BATCH``). Random weights, fp32, ``inference_mode`` for the forward. Each figure is the median of
``--repeats`` timed runs after ``--warmup`` untimed ones, the models timed in turn within each round so a change of
machine load hits all of them alike; the load average is printed with the figures, ``--clock cpu`` times the
process's CPU time instead of the wall clock and ``--malloc retain`` keeps freed memory in the process (both as in
``backbone_speed.py``). The ratios divide the first backbone's speed (img/s) by each other's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

# the same timing and allocator setting (benchmarks/ is the script's own folder)
from backbone_speed import add_timing_arguments, apply_malloc_setting, interleaved, load_average, malloc_setting
from torch import nn

from focalbench.models import VARIANTS, TimmBackbone, build_backbone
from focalbench.models.detection import build_mask_rcnn
from focalbench.models.dino import DINO, DINOCriterion
from focalbench.models.heads import UPerNet
from focalbench.tasks.optim import default_optimizer  # not .base: that imports Lightning

DEFAULT_BACKBONES = ["focalnet_tiny_srf", "swin_tiny_patch4_window7_224"]


def backbone_kwargs(name: str) -> dict:
    if name in VARIANTS:
        return {"focal_windows": 9}  # the paper's detection / segmentation backbones
    if name.startswith("swin"):
        return {"dynamic_img_size": True}
    return {}


def make_backbone(spec: str) -> nn.Module:
    """Ours by variant name, any timm model by its name, timm's own FocalNet as ``timm:focalnet_*`` (focal window 9
    at every stage, as ours)."""
    if spec.startswith("timm:"):
        return TimmBackbone(spec[5:], focal_windows=(9,) * 4)
    return build_backbone(spec, **backbone_kwargs(spec))


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


def upernet(backbone: nn.Module, args) -> Callable[[torch.Tensor], object]:
    model = UPerNet(backbone, 150, channels=512).to(args.device).eval()
    return lambda image: model(image[None])


def input_size(head: str, args) -> tuple[int, int]:
    return (args.seg_size, args.seg_size) if head in ("upernet", "mask2former") else tuple(args.size)


def mask2former_model(backbone: nn.Module, args) -> nn.Module:
    """transformers' Mask2Former on ``backbone`` with the ADE20K recipe's head (150 classes, 100 queries, 9 + 1
    decoder and 6 encoder layers, hidden 256), as ``configs/seg_ade20k_mask2former.yaml`` builds it."""
    from focalbench.models.mask2former import Mask2Former

    return Mask2Former(backbone, 150).to(args.device)


def mask2former(backbone: nn.Module, args) -> Callable[[torch.Tensor], object]:
    model = mask2former_model(backbone, args).eval()
    return lambda image: model(image[None])


def dino(backbone: nn.Module, args) -> Callable[[torch.Tensor], object]:
    model = dino_model(backbone, args).eval()
    return lambda image: model.postprocess(model(*model.preprocess([image])[:2]), [image.shape[-2:]])


def dino_model(backbone: nn.Module, args) -> DINO:
    height, width = args.size
    return DINO(backbone, 80, min_size=min(height, width), max_size=max(height, width)).to(args.device)


# Head name -> (backbone, args) -> a function of one 3xHxW image in [0, 1].
HEADS: dict[str, Callable[[nn.Module, argparse.Namespace], Callable[[torch.Tensor], object]]] = {
    "backbone": bare,
    "mask_rcnn": mask_rcnn,
    "upernet": upernet,
    "mask2former": mask2former,
    "dino": dino,
}


def fixed_target(image: torch.Tensor, count: int = 10) -> dict[str, torch.Tensor]:
    """``count`` boxes spread over the image (xyxy pixels), labels 1..count, box-filled masks."""
    height, width = image.shape[-2:]
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(count, 2, generator=generator) * 0.7
    size = 0.05 + torch.rand(count, 2, generator=generator) * 0.25
    scale = torch.tensor([width, height, width, height])
    boxes = (torch.cat([corner, corner + size], 1) * scale).round()
    masks = torch.zeros(count, height, width, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        mask[y1:y2, x1:x2] = 1
    target = {"boxes": boxes, "labels": torch.arange(1, count + 1), "masks": masks}
    return {k: v.to(image.device) for k, v in target.items()}


def mask_rcnn_train(backbone: nn.Module, args) -> Callable[[torch.Tensor], None]:
    height, width = args.size
    model = build_mask_rcnn(backbone, 81, min_size=min(height, width), max_size=max(height, width)).to(args.device)
    return optimizer_step(model.train(), lambda image: sum(model([image], [fixed_target(image)]).values()))


def upernet_train(backbone: nn.Module, args) -> Callable[[torch.Tensor], None]:
    model = UPerNet(backbone, 150, channels=512).to(args.device).train()
    generator = torch.Generator().manual_seed(0)
    size = (TRAIN_BATCH["upernet"], args.seg_size, args.seg_size)
    labels = torch.randint(0, 150, size, generator=generator).to(args.device)

    def loss(image: torch.Tensor) -> torch.Tensor:
        out = model(image.expand(TRAIN_BATCH["upernet"], -1, -1, -1))
        return F.cross_entropy(out["out"], labels) + 0.4 * F.cross_entropy(out["aux"], labels)

    return optimizer_step(model, loss)


def dino_train(backbone: nn.Module, args) -> Callable[[torch.Tensor], None]:
    model, criterion = dino_model(backbone, args).train(), DINOCriterion(80)

    def loss(image: torch.Tensor) -> torch.Tensor:
        pixels, valid, targets = model.preprocess([image], [fixed_target(image)])
        return sum(criterion(model(pixels, valid, targets), targets).values())

    return optimizer_step(model, loss)


def mask2former_train(backbone: nn.Module, args) -> Callable[[torch.Tensor], None]:
    model = mask2former_model(backbone, args).train()
    generator = torch.Generator().manual_seed(0)
    masks = [(torch.rand(8, args.seg_size, args.seg_size, generator=generator) > 0.5).float().to(args.device)]
    classes = [torch.arange(8, device=args.device)]
    return optimizer_step(model, lambda image: model(image[None], masks, classes).loss)


def optimizer_step(model: nn.Module, loss: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], None]:
    optimizer = default_optimizer(model.parameters())  # the tasks' AdamW (fused), as the configs train

    def step(image: torch.Tensor) -> None:
        loss(image).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# Images in one training step where one is too few: UPerNet's pooling module ends in BatchNorm over 1x1 maps, which
# needs more than one value per channel in training. The printed s/img divides the step by this.
TRAIN_BATCH = {"upernet": 2}

# Head name -> (backbone, args) -> one training step on one 3xHxW image (``--train``).
TRAIN_STEPS: dict[str, Callable[[nn.Module, argparse.Namespace], Callable[[torch.Tensor], None]]] = {
    "mask_rcnn": mask_rcnn_train,
    "upernet": upernet_train,
    "mask2former": mask2former_train,
    "dino": dino_train,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES, help="FocalNet variants or timm names")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--size", nargs=2, type=int, default=[512, 768], metavar=("H", "W"))
    parser.add_argument("--seg-size", type=int, default=512, help="square input of UPerNet and Mask2Former")
    parser.add_argument("--train", action="store_true", help="also time a training step of " + ", ".join(TRAIN_STEPS))
    add_timing_arguments(parser, warmup=1, repeats=3)
    args = parser.parse_args()
    apply_malloc_setting(args)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    images = {head: torch.rand(3, *input_size(head, args), device=args.device) for head in args.heads}
    backbones = {name: make_backbone(name).to(args.device).eval() for name in args.backbones}
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"# {device}; fp32; one image per call; median of {args.repeats} after {args.warmup}; {args.clock} clock; "
        f"{malloc_setting(args)}; {load_average()} at the start"
    )
    print(f"{'head':<10} {'size':>9} {'backbone':<32} {'s/img':>8} {'img/s':>8}")
    for head in args.heads:
        fns = {}
        for name, backbone in backbones.items():
            torch.manual_seed(0)  # the same head weights for every backbone
            fns[name] = lambda run=HEADS[head](backbone, args), image=images[head]: _inference(run, image)
        seconds = interleaved(fns, args)
        size = "x".join(map(str, input_size(head, args)))
        report(head, size, seconds, args)
        if args.train and head in TRAIN_STEPS:
            steps = {}
            for name, backbone in backbones.items():
                torch.manual_seed(0)
                steps[name] = lambda run=TRAIN_STEPS[head](backbone, args), image=images[head]: run(image)
            per_image = {n: t / TRAIN_BATCH.get(head, 1) for n, t in interleaved(steps, args).items()}
            report(f"{head}-train", size, per_image, args)
    print(f"# {load_average()} at the end")


def report(head: str, size: str, seconds: dict[str, float], args) -> None:
    for name, s in seconds.items():
        print(f"{head:<10} {size:>9} {name:<32} {s:>8.3f} {1 / s:>8.2f}")
    ours = args.backbones[0]
    for name in args.backbones[1:]:
        print(f"  {head}: {ours} runs at {seconds[name] / seconds[ours]:.2f}x the speed of {name} ({load_average()})")


def _inference(run: Callable[[torch.Tensor], object], image: torch.Tensor) -> object:
    with torch.inference_mode():
        return run(image)


if __name__ == "__main__":
    main()
