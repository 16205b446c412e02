"""The DINO detector (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End Object
Detection", ICLR 2023) on a dense backbone, in plain PyTorch (no compiled operators).

What comes from where:

- backbone: :func:`focalbench.models.build_backbone` (FocalNet or any timm model: a list of NCHW maps with
  ``out_channels`` / ``strides``); the last ``num_levels - 1`` maps are used and one extra stride-2 3×3 convolution
  adds the coarsest level (DINO-4scale: strides 8/16/32 + 64; 5-scale: 4/8/16/32 + 64).
- resizing, normalisation and padding to a batch: torchvision's ``GeneralizedRCNNTransform`` (the Mask R-CNN task's);
  the padding mask follows from its image sizes.
- from Hugging Face ``transformers`` (Deformable DETR, Zhu et al. 2021): the input projections' layout, the sine
  position embedding (temperature 20, DINO's setting), the multi-scale deformable attention encoder
  (``DeformableDetrEncoder``), the decoder layers, the encoder proposals, valid ratios, the prediction MLP; the
  Hungarian matcher and the focal / L1 / GIoU losses (:mod:`.criterion`); RT-DETR's contrastive denoising group
  builder (:mod:`.denoising`); the top-k post-processing (``DeformableDetrImageProcessor``).
- DINO's own, written here from the paper and checked against the official code (IDEA-Research/DINO): contrastive
  denoising queries and their attention mask (:mod:`.denoising`), mixed query selection (:mod:`.query_selection`),
  look forward twice (:mod:`.decoder`), and which outputs are trained how (:mod:`.criterion`).

Targets are per image ``class_labels`` (0..K-1) and ``boxes`` as cxcywh in [0, 1] of the *unpadded* image.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_convert
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.image_processing_deformable_detr import DeformableDetrImageProcessor
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrEncoder,
    DeformableDetrModel,
    DeformableDetrSinePositionEmbedding,
)

from focalbench.errors import ConfigError
from focalbench.models.contract import input_normalization
from focalbench.models.dino.decoder import DINODecoder
from focalbench.models.dino.denoising import contrastive_denoising
from focalbench.models.dino.query_selection import MixedQuerySelection, box_head, class_head


def projection(in_channels: int, hidden_dim: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """Convolution to the transformer's width + GroupNorm, as DINO's input_proj: 32 groups, or for narrow test
    widths the most groups of at least 2 channels (a 1×1 stride-64 map of one image leaves nothing to normalise
    in a 1-channel group)."""
    conv = nn.Conv2d(in_channels, hidden_dim, kernel_size, stride=stride, padding=kernel_size // 2)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    groups = next(g for g in range(max(1, min(32, hidden_dim // 2)), 0, -1) if hidden_dim % g == 0)
    return nn.Sequential(conv, nn.GroupNorm(groups, hidden_dim))


class DINO(nn.Module):
    """DINO on ``backbone``: deformable encoder, mixed query selection, CDN, look-forward-twice decoder.

    Args:
        backbone: a dense backbone (list of NCHW maps, ``out_channels``, ``size_divisibility``).
        num_classes: K object categories (no background class: sigmoid scores).
        hidden_dim / encoder_layers / decoder_layers / num_heads / ffn_dim / num_points: the transformer
            (DINO: 256, 6, 6, 8, 2048, 4).
        num_levels: feature levels (DINO-4scale: 4; 5-scale: 5); needs ``num_levels - 1`` backbone maps.
        num_queries: matching queries (900); num_dn_queries: denoising budget (100; 0 turns CDN off).
        label_noise_ratio / box_noise_scale: CDN noise (0.5 / 0.4 in the official DINO-4scale config).
        min_size / max_size: resizing (shorter side; a list picks at random per training image, the last for
            evaluation; longer side capped); num_select: detections kept per image (300).
        dropout: in the transformer (0.0).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        hidden_dim: int = 256,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_points: int = 4,
        num_levels: int = 4,
        num_queries: int = 900,
        num_dn_queries: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 0.4,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        num_select: int = 300,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = list(backbone.out_channels)
        if not 1 <= num_levels - 1 <= len(channels):
            raise ConfigError(f"model.num_levels={num_levels}: expected 2..{len(channels) + 1} for maps of {channels}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_select = num_select
        self.dn = {
            "num_dn_queries": num_dn_queries,
            "label_noise_ratio": label_noise_ratio,
            "box_noise_scale": box_noise_scale,
        }
        mean, std = input_normalization(backbone)
        self.transform = GeneralizedRCNNTransform(
            tuple(min_size) if isinstance(min_size, Sequence) else min_size,
            max_size,
            list(mean),
            list(std),
            size_divisible=int(getattr(backbone, "size_divisibility", 32)),
        )
        self.config = DeformableDetrConfig(
            d_model=hidden_dim,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            encoder_attention_heads=num_heads,
            decoder_attention_heads=num_heads,
            encoder_ffn_dim=ffn_dim,
            decoder_ffn_dim=ffn_dim,
            encoder_n_points=num_points,
            decoder_n_points=num_points,
            num_feature_levels=num_levels,
            num_queries=num_queries,
            dropout=dropout,
            attention_dropout=dropout,
            activation_dropout=dropout,
            activation_function="relu",
            two_stage=True,
            with_box_refine=True,
        )
        self.levels = list(range(len(channels) - (num_levels - 1), len(channels)))
        self.input_proj = nn.ModuleList([projection(channels[i], hidden_dim) for i in self.levels])
        self.input_proj.append(projection(channels[-1], hidden_dim, kernel_size=3, stride=2))
        self.position_embedding = DeformableDetrSinePositionEmbedding(hidden_dim // 2, temperature=20, normalize=True)
        self.level_embed = nn.Embedding(num_levels, hidden_dim)  # normal(0, 1) init, as DINO's
        self.encoder = DeformableDetrEncoder(self.config)
        self.query_selection = MixedQuerySelection(hidden_dim, num_classes, num_queries)
        self.decoder = DINODecoder(self.config, class_head(hidden_dim, num_classes), box_head(hidden_dim))
        self.label_embedding = nn.Embedding(num_classes + 1, hidden_dim)  # CDN labels; the last row: padding
        self.reset_transformer_parameters()

    def reset_transformer_parameters(self) -> None:
        """DINO's initialisation of its transformer (``DeformableTransformer._reset_parameters``): Xavier-uniform for
        every matrix of the encoder, the decoder layers, the positional-query MLP and the proposal projection, then
        the deformable attention's own (offsets on a grid, zero attention logits: Hugging Face's, which equals it).
        Hugging Face initialises these matrices with normal(0, 0.02) instead."""
        parts = [self.encoder, self.decoder.layers, self.decoder.query_pos_head, self.query_selection.enc_output]
        keep = {  # the deformable attention's offset and weight layers keep their (official) initialisation
            id(p)
            for part in parts
            for name, module in part.named_modules()
            if name.endswith(("sampling_offsets", "attention_weights"))
            for p in module.parameters()
        }
        for part in parts:
            for p in part.parameters():
                if p.dim() > 1 and id(p) not in keep:
                    nn.init.xavier_uniform_(p)

    # Hugging Face's valid (unpadded) fraction of each level's width and height; it reads nothing from ``self``.
    get_valid_ratio = DeformableDetrModel.get_valid_ratio

    # ------------------------------------------------------------------ input / output
    def preprocess(
        self, images: list[torch.Tensor], targets: list[dict] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[dict] | None]:
        """0..1 CHW images of any size -> normalised padded batch, its validity mask (B, H, W; True on the image),
        and the targets as the model takes them (``boxes`` xyxy pixels + ``labels`` 1..K -> cxcywh in [0, 1] of each
        image + ``class_labels`` 0..K-1; resizing does not change normalised boxes)."""
        batch, _ = self.transform(images)
        pixels = batch.tensors
        valid = torch.zeros(pixels.shape[0], *pixels.shape[2:], dtype=torch.bool, device=pixels.device)
        for mask, (height, width) in zip(valid, batch.image_sizes):
            mask[:height, :width] = True
        if targets is None:
            return pixels, valid, None
        normalised = []
        for image, target in zip(images, targets):
            height, width = image.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=pixels.device)
            boxes = box_convert(target["boxes"].to(pixels.device).float() / scale, "xyxy", "cxcywh")
            normalised.append({"boxes": boxes, "class_labels": target["labels"].to(pixels.device) - 1})
        return pixels, valid, normalised

    def postprocess(self, outputs: dict, image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """The top ``num_select`` (query, class) pairs by sigmoid score per image: ``boxes`` xyxy in pixels of the
        original (h, w) ``image_sizes``, ``scores``, ``labels`` 1..K (Hugging Face's Deformable DETR
        post-processing)."""
        if not hasattr(self, "_processor"):
            object.__setattr__(self, "_processor", DeformableDetrImageProcessor())
        last = SimpleNamespace(logits=outputs["logits"][-1], pred_boxes=outputs["boxes"][-1])
        results = self._processor.post_process_object_detection(
            last, threshold=-1.0, target_sizes=[tuple(s) for s in image_sizes], top_k=self.num_select
        )
        return [{**r, "labels": r["labels"] + 1} for r in results]

    # ------------------------------------------------------------------ the network
    def features(self, pixels: torch.Tensor, valid: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Projected multi-scale maps and their validity masks (nearest-resized from the image's)."""
        maps = self.backbone(pixels)
        sources = [proj(maps[i]) for proj, i in zip(self.input_proj, self.levels)]
        sources.append(self.input_proj[-1](maps[-1]))
        masks = [F.interpolate(valid[None].float(), size=s.shape[-2:])[0].bool() for s in sources]
        return sources, masks

    def forward(self, pixels: torch.Tensor, valid: torch.Tensor, targets: list[dict] | None = None) -> dict:
        """``pixels`` (B, 3, H, W) normalised and padded, ``valid`` (B, H, W). With ``targets`` (training), CDN
        queries are added. Returns ``logits`` (L, B, Q, K) and ``boxes`` (L, B, Q, 4) of the matching queries per
        decoder layer, ``enc_logits`` / ``enc_boxes`` of the selected proposals, and with CDN ``dn_logits``,
        ``dn_boxes`` and ``denoising`` (:class:`~focalbench.models.dino.denoising.DenoisingQueries`)."""
        sources, masks = self.features(pixels, valid)
        shapes = [tuple(s.shape[-2:]) for s in sources]
        flat = torch.cat([s.flatten(2).transpose(1, 2) for s in sources], 1)
        flat_valid = torch.cat([m.flatten(1) for m in masks], 1)
        pos = torch.cat(
            [
                self.position_embedding(s.shape, s.device, s.dtype, mask=m).flatten(2).transpose(1, 2) + embed
                for s, m, embed in zip(sources, masks, self.level_embed.weight)
            ],
            1,
        )
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=flat.device)
        level_start = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.get_valid_ratio(m, dtype=flat.dtype) for m in masks], 1)
        memory = self.encoder(
            inputs_embeds=flat,
            attention_mask=flat_valid,
            spatial_position_embeddings=pos,
            spatial_shapes=spatial_shapes,
            spatial_shapes_list=shapes,
            level_start_index=level_start,
            valid_ratios=valid_ratios,
        ).last_hidden_state

        selected = self.query_selection(memory, flat_valid, shapes)
        content, anchors, blocked, denoising = selected.content, selected.anchors, None, None
        if targets is not None and self.dn["num_dn_queries"] > 0:
            denoising = contrastive_denoising(
                targets, self.num_classes, content.shape[1], self.label_embedding, **self.dn
            )
        if denoising is not None:
            content = torch.cat([denoising.content, content], 1)
            anchors = torch.cat([denoising.anchors, anchors], 1)
            blocked = denoising.blocked
        logits, boxes = self.decoder(
            content, anchors, memory, flat_valid, spatial_shapes, shapes, level_start, valid_ratios, blocked
        )
        if targets is not None and denoising is None:  # keep the CDN embedding in the graph (DDP) at no cost
            logits = logits + 0.0 * self.label_embedding.weight.sum()
        out = {"enc_logits": selected.logits, "enc_boxes": selected.boxes, "denoising": denoising}
        split = denoising.num_queries if denoising is not None else 0
        out.update(logits=logits[:, :, split:], boxes=boxes[:, :, split:])
        if denoising is not None:
            out.update(dn_logits=logits[:, :, :split], dn_boxes=boxes[:, :, :split])
        return out
