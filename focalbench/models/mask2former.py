"""Mask2Former (Cheng et al., 2022) from Hugging Face ``transformers`` with our dense backbone as its encoder.

transformers' pixel-level module calls ``encoder(pixel_values).feature_maps`` (four NCHW maps, strides 4–32) and sizes
its deformable-attention pixel decoder from ``encoder.channels``. :class:`BackboneEncoder` gives any backbone of the
dense contract (FocalNet or timm, :func:`focalbench.models.build_backbone`) that interface; :func:`build_mask2former`
builds ``Mask2FormerForUniversalSegmentation`` from a :class:`~transformers.Mask2FormerConfig`, then puts that encoder
in place of the config's (a throw-away minimal Swin) and a pixel decoder sized for it, initialised by transformers'
own weight init. The backbone keeps its weights (pretrained ones included) and its own parameter names, under
``model.pixel_level_module.encoder.backbone.``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
from transformers.modeling_outputs import BackboneOutput
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

from focalbench.errors import ConfigError


class BackboneEncoder(nn.Module):
    """A dense backbone (``forward(x) -> list[Tensor]``, ``out_channels``, ``strides``) as the encoder Mask2Former's
    pixel-level module expects: ``forward(pixel_values).feature_maps`` and ``channels``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if len(backbone.out_channels) != 4:
            raise ConfigError(f"Mask2Former needs four backbone levels (strides 4..32), got {backbone.strides}")
        self.backbone = backbone
        self.channels = list(backbone.out_channels)

    def forward(self, pixel_values: Tensor) -> BackboneOutput:
        return BackboneOutput(feature_maps=tuple(self.backbone(pixel_values)))


def _mark_initialised(module: nn.Module) -> None:
    # transformers' ``initialize_weights`` skips modules carrying this flag: the backbone keeps its own weights.
    for sub in module.modules():
        sub._is_hf_initialized = True


def build_mask2former(
    backbone: nn.Module,
    num_labels: int,
    *,
    hidden_dim: int = 256,
    num_queries: int = 100,
    decoder_layers: int = 10,
    encoder_layers: int = 6,
    num_attention_heads: int = 8,
    dim_feedforward: int = 2048,
    encoder_feedforward_dim: int = 1024,
    train_num_points: int = 12544,
    no_object_weight: float = 0.1,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> Mask2FormerForUniversalSegmentation:
    """``Mask2FormerForUniversalSegmentation`` on ``backbone`` (see the module docstring).

    ``hidden_dim`` sets the pixel decoder's and the transformer decoder's widths (256 in the paper);
    ``decoder_layers`` counts transformers' way: 9 masked-attention layers + the initial prediction = 10;
    ``encoder_layers`` deformable-attention layers in the pixel decoder (6); the loss weights and point count are
    the official ones (class 2, mask 5, dice 5, no-object 0.1, 112² = 12544 sampled points).
    """
    heads = num_attention_heads
    if hidden_dim % heads or hidden_dim % 32:
        # the pixel decoder normalises with GroupNorm(32 groups)
        raise ConfigError(f"hidden_dim {hidden_dim} must be a multiple of 32 and of num_attention_heads {heads}")
    strides = [int(s) for s in getattr(backbone, "strides", (4, 8, 16, 32))]
    config = Mask2FormerConfig(
        # a minimal stand-in, replaced below: the config needs a backbone to build the model once
        backbone_config=SwinConfig(
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=2,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        num_labels=num_labels,
        feature_size=hidden_dim,
        mask_feature_size=hidden_dim,
        hidden_dim=hidden_dim,
        num_queries=num_queries,
        decoder_layers=decoder_layers,
        encoder_layers=encoder_layers,
        num_attention_heads=heads,
        dim_feedforward=dim_feedforward,
        encoder_feedforward_dim=encoder_feedforward_dim,
        train_num_points=train_num_points,
        no_object_weight=no_object_weight,
        class_weight=class_weight,
        mask_weight=mask_weight,
        dice_weight=dice_weight,
        feature_strides=strides,
    )
    model = Mask2FormerForUniversalSegmentation(config)
    pixel_level = model.model.pixel_level_module
    encoder = BackboneEncoder(backbone)
    _mark_initialised(encoder)
    pixel_level.encoder = encoder
    pixel_level.decoder = Mask2FormerPixelDecoder(config, feature_channels=encoder.channels)
    model.initialize_weights()  # only the new pixel decoder lacks the flag
    return model


class Mask2Former(nn.Module):
    """Our backbone + transformers' Mask2Former, with input padding handled: images are padded right/bottom to the
    backbone's ``size_divisibility`` and the training masks with them (0 = not the segment, as detectron2), so
    predicted and target masks stay aligned; :meth:`mask_logits` crops predictions back to the input.

    ``forward(images, mask_labels=None, class_labels=None)`` returns transformers' output (with ``loss`` when
    targets are given: per image an ``N×H×W`` float tensor of binary masks and ``N`` class ids).
    """

    def __init__(self, backbone: nn.Module, num_labels: int, **sizes) -> None:
        super().__init__()
        self.net = build_mask2former(backbone, num_labels, **sizes)
        self.size_divisibility = int(getattr(backbone, "size_divisibility", 32))

    @property
    def backbone(self) -> nn.Module:
        return self.net.model.pixel_level_module.encoder.backbone

    def head_modules(self) -> list[nn.Module]:
        """Everything but the backbone: the pixel decoder, the transformer decoder, the class predictor (the
        criterion has no parameters)."""
        net = self.net
        return [net.model.pixel_level_module.decoder, net.model.transformer_module, net.class_predictor]

    def _pad(self, x: Tensor) -> Tensor:
        d = self.size_divisibility
        pad_h, pad_w = (-x.shape[-2]) % d, (-x.shape[-1]) % d
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def forward(
        self,
        images: Tensor,
        mask_labels: Sequence[Tensor] | None = None,
        class_labels: Sequence[Tensor] | None = None,
    ):
        padded = self._pad(images)
        if mask_labels is not None:
            mask_labels = [self._pad(m.float()) for m in mask_labels]
            class_labels = [c.long() for c in class_labels]
        return self.net(pixel_values=padded, mask_labels=mask_labels, class_labels=class_labels)

    @staticmethod
    def mask_logits(outputs, input_size: Sequence[int]) -> Tensor:
        """Per-query mask logits ``[N, Q, h, w]`` upsampled to the padded input and cropped to ``input_size``."""
        masks = outputs.masks_queries_logits
        stride = 4  # transformers' mask features are at 1/4 of the input
        padded = (masks.shape[-2] * stride, masks.shape[-1] * stride)
        masks = F.interpolate(masks.float(), size=padded, mode="bilinear", align_corners=False)
        return masks[..., : input_size[0], : input_size[1]]
