"""UPerNet (Xiao et al., 2018, arXiv:1807.10221) as the FocalNet paper uses it for ADE20K: mmseg's ``UPerHead``
on the four backbone stages plus the auxiliary ``FCNHead`` on stage 3.

Written to match mmseg (``mmseg/models/decode_heads/uper_head.py``, ``fcn_head.py``, ``psp_head.py``):
* PPM: for each pool scale s, ``AdaptiveAvgPool(s) → 1×1 ConvModule → bilinear resize`` back to the last map,
  concatenated with that map, then a 3×3 ConvModule ``bottleneck`` to ``channels``;
* FPN: a 1×1 lateral ConvModule per other level, top-down ``lateral[i-1] += resize(lateral[i])``, a 3×3 ConvModule
  ``fpn_convs[i]`` on every fused level *except* the PPM output (as mmseg), all levels resized to the stride-4 size,
  concatenated, 3×3 ConvModule ``fpn_bottleneck``;
* ``cls_seg``: ``Dropout2d(0.1)`` then a 1×1 classifier ``conv_seg``.

A ConvModule is torchvision's :class:`Conv2dNormActivation` (conv without bias, BatchNorm, ReLU), so
``nn.SyncBatchNorm.convert_sync_batchnorm`` converts every norm. Resizing is bilinear with ``align_corners=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _init_weights(module: nn.Module) -> None:
    # mmcv's ConvModule init (Kaiming normal, fan_out, ReLU); the classifier gets normal(0, 0.01) as mmseg.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _SegHead(nn.Module):
    """Shared tail of mmseg's ``BaseDecodeHead``: ``Dropout2d`` + 1×1 classifier ``conv_seg``."""

    def _init_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        _init_weights(self)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, feats: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(feats))


class PPM(nn.Module):
    """Pyramid pooling module of PSPNet: one ``AdaptiveAvgPool(s) → 1×1 conv-BN-ReLU`` branch per pool scale, each
    resized back to the input's size. Returns the list of branch outputs (the caller concatenates them with x).

    Adaptive pooling to a scale larger than the map (e.g. 6 on a 2×2 map) just repeats values, so small inputs work.
    The scale-1 branch normalises over N·1·1 values: BatchNorm in training needs a batch of at least 2 (as mmseg).
    """

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), Conv2dNormActivation(in_channels, channels, kernel_size=1))
            for scale in self.pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_resize(stage(x), x.shape[2:]) for stage in self.stages]


class UPerHead(_SegHead):
    """UPerNet decode head (mmseg ``UPerHead``): PPM on the last level, FPN over the others, fused at stride 4.

    Args:
        in_channels: channels of the input levels, finest (stride 4) first, e.g. ``backbone.out_channels``.
        num_classes: number of output classes (logit channels).
        channels: width C of every internal ConvModule (mmseg ``channels``, 512 in the paper's setting).
        pool_scales: PPM output sizes.
        dropout: ``Dropout2d`` probability before the classifier.

    ``forward(features)`` takes the list of maps (finest first) and returns logits at the finest map's size.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if len(in_channels) < 1:
            raise ValueError("UPerHead needs at least one input level")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = channels
        self.psp_modules = PPM(in_channels[-1], channels, pool_scales)
        self.bottleneck = Conv2dNormActivation(in_channels[-1] + len(pool_scales) * channels, channels, kernel_size=3)
        self.lateral_convs = nn.ModuleList(Conv2dNormActivation(c, channels, kernel_size=1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            Conv2dNormActivation(channels, channels, kernel_size=3) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = Conv2dNormActivation(len(in_channels) * channels, channels, kernel_size=3)
        self._init_classifier(channels, num_classes, dropout)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fused C-channel map at the finest level's size, before dropout and the classifier."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"UPerHead built for {len(self.in_channels)} levels, got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        laterals.append(self.psp_forward(features[-1]))
        # Top-down: each level gets the coarser (already fused) one, resized to its own size.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        outs.append(laterals[-1])  # the PPM output has no fpn_conv (mmseg)
        size = outs[0].shape[2:]
        outs = [outs[0]] + [_resize(o, size) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.forward_features(features))


class FCNHead(_SegHead):
    """Auxiliary FCN head as in mmseg's UPerNet configs: ``num_convs=1``, ``concat_input=False``, i.e. one 3×3
    conv-BN-ReLU to ``channels`` (256), ``Dropout2d(dropout)``, 1×1 classifier. Takes one feature map."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = channels
        self.convs = Conv2dNormActivation(in_channels, channels, kernel_size=3)
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


class UPerNet(nn.Module):
    """Backbone + :class:`UPerHead` (+ auxiliary :class:`FCNHead` on level ``aux_index``), heads sized from
    ``backbone.out_channels``.

    ``forward(images)`` returns ``{"out": logits}`` and, in training mode when the auxiliary head exists,
    ``"aux": aux_logits``; both are ``[N, num_classes, H, W]`` at the input's size. Backbones that pad the input
    to their ``size_divisibility`` (right/bottom, as ours do) are handled by resizing the logits to the padded
    size and cropping, so pixels stay aligned with the input for any H×W.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux_index: int | None = 2,
        aux_channels: int = 256,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        in_channels = list(backbone.out_channels)
        self.decode_head = UPerHead(
            in_channels, num_classes, channels=channels, pool_scales=pool_scales, dropout=dropout
        )
        if aux_index is not None and not -len(in_channels) <= aux_index < len(in_channels):
            raise ValueError(f"aux_index {aux_index} out of range for a backbone with {len(in_channels)} levels")
        self.aux_index = aux_index
        self.auxiliary_head = (
            FCNHead(in_channels[aux_index], num_classes, channels=aux_channels, dropout=dropout)
            if aux_index is not None
            else None
        )
        strides = getattr(backbone, "strides", None)
        self.strides = [int(s) for s in strides] if strides is not None else [None] * len(in_channels)

    def _to_input(self, logits: torch.Tensor, stride: int | None, size: Sequence[int]) -> torch.Tensor:
        height, width = size
        if stride is not None:
            padded = (logits.shape[2] * stride, logits.shape[3] * stride)
            if padded[0] >= height and padded[1] >= width:
                return _resize(logits, padded)[:, :, :height, :width]
        return _resize(logits, size)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = images.shape[2:]
        features = list(self.backbone(images))
        out = {"out": self._to_input(self.decode_head(features), self.strides[0], size)}
        if self.auxiliary_head is not None and self.training:
            aux = self.auxiliary_head(features[self.aux_index])
            out["aux"] = self._to_input(aux, self.strides[self.aux_index], size)
        return out
