"""Input normalisation is decided once, from the backbone's weights (timm's ``pretrained_cfg``, ImageNet's for
FocalNet), and the data, the detector and the pictures all use it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focalbench.callbacks.tensorboard import displayable, image_normalization
from focalbench.cli import main
from focalbench.models.contract import IMAGENET_NORMALIZATION

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's test_convnext (as Inception, ViT and CLIP weights) uses 0.5 / 0.5


def fit(config: str, tmp_path, *args: str):
    return main(
        [
            "fit", "--config", config, "--trainer.fast_dev_run", "true", "--data.num_workers", "0",
            "--trainer.default_root_dir", str(tmp_path / "runs"), *args,
        ]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("backbone", "expected"), [("test_convnext", HALF), ("focalnet_tiny_lrf", IMAGENET_NORMALIZATION)]
)
def test_segmentation_data_normalises_with_the_backbones_statistics(backbone, expected, tmp_path):
    cli = fit("demo_seg.yaml", tmp_path, "--model.backbone", backbone, "--model.decode_channels", "16")
    assert cli.model.normalization == expected and cli.datamodule.normalization == expected
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in expected)
    loaded = cli.datamodule.eval_transform()(image=pixels, mask=np.zeros((8, 8), np.uint8))["image"]
    torch.testing.assert_close(loaded, (torch.from_numpy(pixels).permute(2, 0, 1) / 255 - mean) / std)
    # the pictures undo exactly that
    torch.testing.assert_close(displayable(loaded[None], image_normalization(cli.trainer))[0] * 255,
                               torch.from_numpy(pixels).float(), atol=1e-3, rtol=0)  # fmt: skip


def test_classification_data_follows_a_timm_classifier(tmp_path, image_folder, tiny_args):
    cli = fit("cls_custom.yaml", tmp_path, "--data.root", str(image_folder), "--model.pretrained", "null",
              "--model.backbone", "test_convnext", *tiny_args)  # fmt: skip
    assert cli.datamodule.normalization == HALF
    pixels = np.full((40, 40, 3), 255, np.uint8)
    assert torch.allclose(cli.datamodule.eval_transform()(image=pixels)["image"], torch.ones(1))  # (1 - .5) / .5


def test_detector_normalises_itself_and_the_data_stays_in_unit_range(tmp_path):
    cli = fit("demo_det.yaml", tmp_path, "--model.backbone", "test_convnext", "--model.min_size", "64",
              "--model.max_size", "64")  # fmt: skip
    transform = cli.model.model.transform
    assert (tuple(transform.image_mean), tuple(transform.image_std)) == HALF
    assert cli.datamodule.image_normalization == ((0.0,) * 3, (1.0,) * 3)  # pictures show the [0, 1] images as is
    image = cli.datamodule.val_set[0]["image"]
    assert 0.0 <= image.min() and image.max() <= 1.0
