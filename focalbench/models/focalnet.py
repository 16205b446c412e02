"""Focal Modulation Networks (Yang et al., 2022, arXiv:2203.11926), written from section 3 of the paper.

Tensors are NCHW in ``channels_last`` memory from the stem on: the per-token projections (``f``, ``h``, ``proj``,
the MLP) are 1×1 convolutions, whose (N·H·W, C) view is then a plain matrix, so that each training pass runs on
oneDNN's convolution or MKL's product, whichever its first calls timed faster (``focalbench.models.pointwise``); the
depth-wise convolutions read it directly; LayerNorm over C is a permute *view* to NHWC, so no layout copies are
made anywhere. Parameter names follow the official checkpoints (``patch_embed``, ``layers.i.blocks.j``,
``modulation.f/h/proj/focal_layers``, ``layers.i.downsample`` at the end of stage i); projections are stored as
1×1 kernels ([o, i, 1, 1]); ``focalbench.models.checkpoints`` converts the official, timm and Hugging Face layouts.
The block itself (focal modulation, then the MLP) is :mod:`focalbench.models.focalnet_block`.

Two models share the trunk (``patch_embed`` + ``layers``):
* :class:`FocalNet`, the classifier (final ``norm`` + average pool + ``head``);
* :class:`FocalNetBackbone`, the dense-task backbone of the official detection/segmentation code: the output of
  each stage *before* its downsampling, each through its own LayerNorm ``norm0..norm3``, strides 4/8/16/32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from focalbench.errors import ConfigError
from focalbench.models.contract import pad_to_multiple
from focalbench.models.focalnet_block import FocalModulation, FocalNetBlock, LayerNorm2d
from focalbench.models.pointwise import PointwiseConv2d

__all__ = ["FocalModulation", "FocalNet", "FocalNetBackbone", "FocalNetBlock", "LayerNorm2d"]


class PatchEmbed(nn.Module):
    """Strided convolution + LayerNorm.

    Non-overlapping (kernel = stride) by default; ``overlap`` gives the large models' convolutional embedding
    (7×7 stride 4 for the stem, 3×3 stride 2 between stages). Inputs not divisible by the stride are zero-padded
    on the right/bottom, as the official code does.
    """

    def __init__(
        self, in_chans: int, embed_dim: int, stride: int, overlap: bool = False, stem_padding: int = 2
    ) -> None:
        super().__init__()
        self.stride = stride
        if overlap:
            kernel, padding = (7, stem_padding) if stride == 4 else (3, 1)
        else:
            kernel, padding = stride, 0
        self.pad_to_stride = not overlap
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=stride, padding=padding)
        self.norm = LayerNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_to_stride:
            pad_h, pad_w = (-x.shape[2]) % self.stride, (-x.shape[3]) % self.stride
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x))


class FocalNetStage(nn.Module):
    """``depth`` blocks at one resolution, then the optional downsampling (official order)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        out_dim: int | None,
        drop_path: Sequence[float],
        overlap_down: bool = False,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FocalNetBlock(dim, drop_path=dp, **block_kwargs) for dp in drop_path)
        self.downsample = PatchEmbed(dim, out_dim, stride=2, overlap=overlap_down) if out_dim else None
        self.grad_checkpointing = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


def _per_stage(value: int | Sequence[int], num_stages: int, name: str) -> list[int]:
    values = [value] * num_stages if isinstance(value, int) else list(value)
    if len(values) != num_stages:
        raise ConfigError(f"{name} has {len(values)} entries, expected one per stage ({num_stages})")
    return values


class _FocalNetTrunk(nn.Module):
    """Patch embedding and stages; shared by the classifier and the dense backbone."""

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        focal_levels: int | Sequence[int] = 2,
        focal_windows: int | Sequence[int] = 3,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        use_overlap_embed: bool = False,
        stem_padding: int = 2,
        layerscale_value: float | None = None,
        use_post_norm: bool = False,
        use_post_norm_in_modulation: bool = False,
        normalize_modulator: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        self.depths = tuple(depths)
        self.focal_levels = _per_stage(focal_levels, num_stages, "focal_levels")
        self.focal_windows = _per_stage(focal_windows, num_stages, "focal_windows")
        self.dims = [embed_dim * 2**i for i in range(num_stages)]
        self.strides = [patch_size * 2**i for i in range(num_stages)]
        self.patch_embed = PatchEmbed(
            in_chans, embed_dim, stride=patch_size, overlap=use_overlap_embed, stem_padding=stem_padding
        )
        self.pos_drop = nn.Dropout(drop_rate)
        # Stochastic depth grows linearly with block index over the whole network (paper, appendix).
        total = sum(depths)
        rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                FocalNetStage(
                    self.dims[i],
                    depth,
                    out_dim=self.dims[i + 1] if i + 1 < num_stages else None,
                    drop_path=rates[start : start + depth],
                    overlap_down=use_overlap_embed,
                    focal_level=self.focal_levels[i],
                    focal_window=self.focal_windows[i],
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    layerscale_value=layerscale_value,
                    use_post_norm=use_post_norm,
                    use_post_norm_in_modulation=use_post_norm_in_modulation,
                    normalize_modulator=normalize_modulator,
                )
            )
        self.set_grad_checkpointing(grad_checkpointing)

    # The 1×1 convolutions that are ``nn.Linear`` layers in the official code (and initialised as such there).
    LINEAR_IN_OFFICIAL = ("modulation.f", "modulation.proj", "mlp.fc1", "mlp.fc2")

    def init_weights(self) -> None:
        """The official initialisation: truncated-normal (std 0.02) weights and zero biases for the layers that are
        ``nn.Linear`` there (``f``, ``proj``, the MLP; here 1×1 convolutions), unit LayerNorms, and PyTorch's own
        default for the real convolutions (patch embedding, downsampling, the depth-wise focal kernels and ``h``).

        timm initialises every convolution at std 0.02 instead; that shrinks the depth-wise contexts ~10× (a 3×3
        kernel's default std is ~0.19), the modulator with them, and a small FocalNet then barely trains from
        scratch (the CPU demo stayed near chance)."""
        for name, module in self.named_modules():
            linear = isinstance(module, nn.Conv2d) and name.endswith(self.LINEAR_IN_OFFICIAL)
            if linear or isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                module.reset_parameters()
            elif isinstance(module, nn.LayerNorm):  # LayerNorm2d included
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (activation checkpointing): less memory, ~1/3 more time. The
        1×1 layers then keep to oneDNN (:class:`~focalbench.models.pointwise.PointwiseConv2d`'s ``autotune``)."""
        for stage in self.layers:
            stage.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, PointwiseConv2d):
                module.autotune = not enable

    def set_fused_inference(self, enable: bool = True) -> None:
        """Use oneDNN post-op fusion for no-grad CPU forwards (``focalbench.models.fused``); on by default."""
        for module in self.modules():
            if isinstance(module, FocalNetBlock):
                module.fused_inference = enable

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last from here on: every later op keeps it, so no layout copies are made in the network.
        return self.pos_drop(self.patch_embed(x.contiguous(memory_format=torch.channels_last)))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of every stage before its downsampling."""
        x = self.forward_stem(x)
        outputs = []
        for stage in self.layers:
            x = stage.forward_blocks(x)
            outputs.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outputs

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise lr decay: stem, then each block (or stage), then the top.

        Our ``layers.i.downsample`` is timm's ``layers.{i+1}.downsample``: it joins the first block of stage i+1 as
        in timm, so both models get the same lr scale for every parameter."""
        next_stage = [(i + 1,) if coarse else (i + 1, 0) for i in range(len(self.layers))]
        downsample = [(rf"^layers\.{i}\.downsample", ordinal) for i, ordinal in enumerate(next_stage)]
        blocks = downsample + ([(r"^layers\.(\d+)", None)] if coarse else [(r"^layers\.(\d+)\.blocks\.(\d+)", None)])
        return {"stem": r"^patch_embed", "blocks": blocks + [(r"^norm", (99999,))]}

    def no_weight_decay(self) -> set[str]:
        return set()


class FocalNet(_FocalNetTrunk):
    """FocalNet image classifier: trunk, final LayerNorm, global average pooling and a linear ``head``.

    ``forward_features`` returns the normalised last feature map (NCHW), ``forward_head`` pools and classifies,
    as timm models do, so timm's optimizer factory, EMA and layer decay work on it unchanged.
    """

    def __init__(self, num_classes: int = 1000, **trunk_kwargs) -> None:
        super().__init__(**trunk_kwargs)
        self.num_classes = num_classes
        self.num_features = self.dims[-1]
        self.norm = LayerNorm2d(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FocalNetBackbone(_FocalNetTrunk):
    """Dense-task FocalNet (detection, segmentation), the official ``mmdet``/``mmseg`` backbone.

    Returns the stage outputs before downsampling, each through its own LayerNorm ``norm{i}``, as NCHW maps with
    strides ``self.strides`` (4/8/16/32) and channels ``self.out_channels``. The input is zero-padded on the
    right/bottom to a multiple of ``size_divisibility`` (32), so every stage halves exactly.
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), **trunk_kwargs) -> None:
        trunk_kwargs.setdefault("stem_padding", 3)  # the official dense-task stem (overlapping embedding only)
        super().__init__(**trunk_kwargs)
        self.out_indices = tuple(out_indices)
        for i in self.out_indices:
            self.add_module(f"norm{i}", LayerNorm2d(self.dims[i]))
        self.size_divisibility = self.strides[-1]
        self.out_channels = [self.dims[i] for i in self.out_indices]
        self.strides = [self.strides[i] for i in self.out_indices]
        self.init_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages = self.forward_stages(pad_to_multiple(x, self.size_divisibility))
        return [getattr(self, f"norm{i}")(stages[i]) for i in self.out_indices]
