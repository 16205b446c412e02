"""The focal modulation maps of the paper's visualisations: |M| of the last stage, over validation images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

from focalbench.callbacks.tensorboard import displayable, grid, image_normalization, log_figure
from focalbench.models.focalnet import _FocalNetTrunk
from focalbench.models.focalnet_block import FocalModulation, FocalNetBlock


def last_modulation(module: torch.nn.Module) -> tuple[torch.nn.Module, FocalModulation] | tuple[None, None]:
    """The FocalNet inside ``module`` and its last focal modulation (deepest block of the last stage)."""
    trunk = next((m for m in module.modules() if isinstance(m, _FocalNetTrunk)), None)
    if trunk is None:
        return None, None
    return trunk, [m for m in trunk.modules() if isinstance(m, FocalModulation)][-1]


def modulation_maps(trunk: torch.nn.Module, modulation: FocalModulation, images: torch.Tensor) -> torch.Tensor:
    """Mean over channels of |M| = |h(Z_out)| at the last block, upsampled to the image size (B, H, W)."""
    captured = {}
    handle = modulation.h.register_forward_hook(lambda _m, _i, out: captured.setdefault("m", out))
    blocks = [m for m in trunk.modules() if isinstance(m, FocalNetBlock)]
    fused = [block.fused_inference for block in blocks]
    try:
        for block in blocks:  # the fused inference path calls oneDNN directly, so module hooks would not fire
            block.fused_inference = False
        with torch.no_grad():
            trunk.forward_stages(images)
    finally:
        handle.remove()
        for block, state in zip(blocks, fused):
            block.fused_inference = state
    maps = captured["m"].abs().mean(1, keepdim=True).float()
    return F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


class FocalModulationMaps(Callback):
    """Logs the first validation images beside the magnitude of their last-stage modulator (rank 0, each epoch).

    Models without a FocalNet (a timm backbone) log nothing.
    """

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking:
            return
        trunk, modulation = last_modulation(pl_module)
        if trunk is None:
            return
        images = batch["image"]
        if isinstance(images, (list, tuple)):  # detection batches: images of different sizes
            images = images[:1][0][None]
        images = images[: self.num_images]
        maps = modulation_maps(trunk, modulation, images).cpu()
        figure, axes = grid(2 * len(images))
        for i, (image, heat) in enumerate(zip(displayable(images, image_normalization(trainer)), maps)):
            axes[2 * i].imshow(image)
            axes[2 * i + 1].imshow(image)
            axes[2 * i + 1].imshow(heat, cmap="jet", alpha=0.5)
        figure.suptitle("|modulator| of the last focal modulation")
        log_figure(trainer, "val/focal_modulation", figure)
