"""Albumentations pipelines for classification (the paper's ImageNet recipe and its evaluation crop)."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import rand_augment_transform


class SeededTransform:
    """An albumentations pipeline whose random stream follows torch's seeding, so ``seed_everything`` reproduces
    a run: albumentations 2.x draws from its own generator, seeded from the OS unless told otherwise.

    Each DataLoader worker reseeds from its torch worker seed (distinct per worker, epoch and rank); without workers
    the process's initial torch seed is used.
    """

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline
        self._seed: int | None = None

    def __call__(self, **data):
        info = torch.utils.data.get_worker_info()
        seed = info.seed if info is not None else torch.initial_seed()
        if seed != self._seed:
            self.pipeline.set_random_seed(seed % 2**32)
            self._seed = seed
        return self.pipeline(**data)


class RandAugment(A.ImageOnlyTransform):
    """timm's RandAugment (``rand-m9-mstd0.5-inc1``, the paper's policy) as an albumentations step.

    Albumentations has no RandAugment; timm's is the one the official FocalNet training used, so it is wrapped.
    """

    def __init__(self, config: str, image_size: int, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN, p: float = 1.0):
        super().__init__(p=p)
        self.config = config
        hparams = {"translate_const": int(image_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
        hparams["interpolation"] = Image.BICUBIC
        # At magnitude 10 timm's increasing Posterize keeps 0 bits, which Pillow >= 12 rejects; just below 10 it
        # keeps 1 bit. Only draws of m9±0.5 that reach 10 (about 2 %) are affected.
        hparams["magnitude_max"] = 9.99
        self.policy = rand_augment_transform(config, hparams)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return np.asarray(self.policy(Image.fromarray(img)))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("config",)


def classification_train_transform(
    image_size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    random_erasing: float = 0.25,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> SeededTransform:
    """Random-resized crop (bicubic), flip, RandAugment, normalisation, random erasing (the paper's recipe)."""
    steps: list[A.BasicTransform] = [
        A.RandomResizedCrop(size=(image_size, image_size), scale=scale, interpolation=cv2.INTER_CUBIC),
        A.HorizontalFlip(p=hflip),
    ]
    if auto_augment:
        steps.append(RandAugment(auto_augment, image_size, mean))
    steps.append(A.Normalize(mean=mean, std=std))
    if random_erasing > 0:
        # timm's "pixel" mode: erased boxes filled with per-pixel normal noise in the normalised space
        steps.append(A.Erasing(p=random_erasing, scale=(0.02, 1 / 3), fill="random_uniform"))
    steps.append(ToTensorV2())
    return SeededTransform(A.Compose(steps))


def classification_eval_transform(
    image_size: int,
    *,
    crop_pct: float = 0.875,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> A.Compose:
    """Resize the shorter side to ``image_size / crop_pct`` (bicubic), centre crop, normalise."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=int(image_size / crop_pct), interpolation=cv2.INTER_CUBIC),
            A.CenterCrop(height=image_size, width=image_size),
            A.Normalize(mean=mean, std=std),
            ToTensorV2(),
        ]
    )
