"""Is the data loader the bottleneck? Train-loader img/s with the paper's augmentation vs train-step img/s.

    python benchmarks/data_speed.py                    # 224 px JPEGs, FocalNet-T SRF, 2 threads
    python benchmarks/data_speed.py --workers 0 2 4 --batch-size 16

Writes a small ImageNet-like folder of random-texture JPEGs (500x375, like ImageNet's typical size) into a
temporary directory, then measures, in one process: images per second delivered by
``ClassificationDataModule.train_dataloader()`` (decode + RandomResizedCrop + flip + RandAugment m9 + normalise +
random erasing) for each worker count, and images per second of a FocalNet training step (forward, backward, AdamW)
at the same batch size. The ratio loader/step must stay above 1 for the loader not to be the bottleneck.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from focalbench.data.classification import ClassificationDataModule
from focalbench.models import create_model
from focalbench.tasks.optim import default_optimizer  # not .base: that imports Lightning


def write_folder(root: Path, classes: int, per_class: int, size: tuple[int, int] = (375, 500)) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        for split in ("train", "val"):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else 2):
                base = rng.integers(0, 255, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
                image = Image.fromarray(base).resize(size[::-1], Image.BILINEAR)
                image.save(folder / f"{i:04d}.jpg", quality=90)
    return root


def loader_rate(root: Path, workers: int, batch_size: int, image_size: int, batches: int) -> float:
    module = ClassificationDataModule(root=str(root), image_size=image_size, batch_size=batch_size, num_workers=workers)
    module.setup("fit")
    iterator = iter(module.train_dataloader())
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def step_rate(name: str, batch_size: int, image_size: int, repeats: int, precision: str) -> float:
    model = create_model(name, num_classes=1000).train()
    optimizer = default_optimizer(model.parameters())  # the tasks' AdamW (fused), as the configs train
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 1000, (batch_size,))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="focalnet_tiny_srf")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp), classes=4, per_class=(args.batches + 2) * args.batch_size // 4 + 1)
        step = step_rate(args.model, args.batch_size, args.image_size, repeats=5, precision=args.precision)
        print(f"{args.model} train step ({args.precision}, batch {args.batch_size}): {step:.1f} img/s")
        print(f"{'workers':>8} {'loader img/s':>13} {'loader/step':>12}")
        for workers in args.workers:
            rate = loader_rate(root, workers, args.batch_size, args.image_size, args.batches)
            print(f"{workers:>8} {rate:>13.1f} {rate / step:>12.2f}")


if __name__ == "__main__":
    main()
