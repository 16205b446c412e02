"""DINO's decoder: Deformable DETR's decoder layers with box refinement, DAB-DETR's positional queries from the
anchor boxes, and *look forward twice*, DINO's third addition (Zhang et al., ICLR 2023, Sec. 3.5).

Iterative refinement (Deformable DETR) lets layer ``i`` refine the box of layer ``i-1``: ``b_i = σ(Δ_i +
σ⁻¹(b_{i-1}))``, and detaches ``b_{i-1}`` so that each layer's loss only trains its own offset ``Δ_i``. Look
forward once. DINO keeps the detached box as the *input* of the next layer but predicts with the undetached one, so
the loss of layer ``i`` also reaches ``Δ_{i-1}``: each offset is trained by two layers' losses
(:func:`look_forward_twice`).

From Hugging Face ``transformers``: the decoder layer (self-attention, multi-scale deformable cross-attention, FFN,
post-norm; ``DeformableDetrDecoderLayer``, built through ``DeformableDetrDecoder`` for its weight initialisation),
the sine embedding of a box (``DeformableDetrModel.get_proposal_pos_embed``) and the MLP. DINO's own, here: the
positional query ``MLP(sine(anchor))`` recomputed from every layer's anchor, the self-attention mask of the
denoising groups, the shared prediction heads on a final LayerNorm, and the look-forward-twice update.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoder,
    DeformableDetrMLPPredictionHead,
    DeformableDetrModel,
    inverse_sigmoid,
)


def look_forward_twice(
    prediction_offset: torch.Tensor, refinement_offset: torch.Tensor, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's box update. ``reference``: the previous layer's refined box (cxcywh in [0, 1]), undetached.

    Returns ``(prediction, refined)``: ``prediction = σ(Δ + σ⁻¹(reference))`` is what the layer's loss sees and keeps
    the gradient into the previous layer's offset; ``refined = σ(Δ' + σ⁻¹(reference.detach()))`` is this layer's box,
    whose gradient reaches only this layer's offset ``Δ'`` (the next layer gets it detached as its anchor and
    undetached as its ``reference``). DINO computes ``Δ`` on the normalised and ``Δ'`` on the raw layer output (the
    same box head), as here.
    """
    prediction = (prediction_offset + inverse_sigmoid(reference)).sigmoid()
    refined = (refinement_offset + inverse_sigmoid(reference.detach())).sigmoid()
    return prediction, refined


class DINODecoder(nn.Module):
    """``config.decoder_layers`` Deformable DETR decoder layers run from the anchors, with the prediction heads.

    Args:
        config: the Hugging Face config (``d_model``, heads, points, levels, FFN width, dropout).
        class_head / box_head: the prediction heads, shared by all layers (DINO's ``dec_pred_*_embed_share``).
    """

    # Sine embedding of a box (4 × d_model / 2 features) from Hugging Face; it reads ``self.config.d_model``.
    get_proposal_pos_embed = DeformableDetrModel.get_proposal_pos_embed

    def __init__(self, config: DeformableDetrConfig, class_head: nn.Module, box_head: nn.Module) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.layers = DeformableDetrDecoder(config).layers
        self.query_pos_head = DeformableDetrMLPPredictionHead(2 * d, d, d, num_layers=2)
        self.norm = nn.LayerNorm(d)
        self.class_head = class_head
        self.box_head = box_head

    def forward(
        self,
        content: torch.Tensor,
        anchors: torch.Tensor,
        memory: torch.Tensor,
        memory_valid: torch.Tensor,
        spatial_shapes: torch.Tensor,
        spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        valid_ratios: torch.Tensor,
        blocked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ``content`` (B, Q, C) at ``anchors`` (B, Q, 4, cxcywh in [0, 1], no gradient) over the encoder's
        ``memory`` (B, N, C). ``blocked`` (Q, Q): pairs the self-attention may not attend (denoising groups).

        Returns per layer the class logits (L, B, Q, K) and boxes (L, B, Q, 4).
        """
        mask = None
        if blocked is not None:  # additive, as Hugging Face's eager and SDPA attention both take it
            mask = torch.zeros(blocked.shape, dtype=content.dtype, device=content.device)
            mask = mask.masked_fill(blocked, float("-inf"))[None, None]
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # boxes into the padded frame
        hidden, reference = content, anchors
        logits, boxes = [], []
        for layer in self.layers:
            anchor = reference.detach()[:, :, None] * ratios
            # positional query from the anchor (DAB-DETR); the Hugging Face embedding takes inverse-sigmoid boxes
            query_pos = self.query_pos_head(self.get_proposal_pos_embed(inverse_sigmoid(anchor[:, :, 0])))
            hidden = layer(
                hidden,
                query_pos,
                anchor,
                spatial_shapes,
                spatial_shapes_list,
                level_start_index,
                memory,
                memory_valid,
                attention_mask=mask,  # reaches the layer's self-attention
            )
            normed = self.norm(hidden)
            box, reference = look_forward_twice(self.box_head(normed), self.box_head(hidden), reference)
            logits.append(self.class_head(normed))
            boxes.append(box)
        return torch.stack(logits), torch.stack(boxes)
