"""Mixed query selection, DINO's second addition (Zhang et al., ICLR 2023, Sec. 3.4).

Two-stage Deformable DETR scores every encoder token as a proposal (a box around the token's position,
``0.05 · 2^level`` wide, refined by a box head) and starts the decoder from the top-k. It takes both the anchor
*and* the content query from the selected tokens. DINO keeps only the anchors (positional queries) from the encoder
and learns the content queries as free embeddings, because the encoder's features are "preliminary" and can mislead
the decoder: the *mixed* selection.

Here the proposals are Hugging Face ``DeformableDetrModel.gen_encoder_output_proposals`` (token grid, validity
masking, the ``enc_output`` projection + LayerNorm), reused as a method; the top-k is over each token's best class
logit, as in DINO (Deformable DETR ranks by one binary logit). The selected boxes go to the decoder detached; the
undetached ones and their logits are the encoder's own outputs, trained with the same Hungarian loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrMLPPredictionHead,
    DeformableDetrModel,
)


@dataclass
class SelectedQueries:
    """The decoder's matching queries and the encoder outputs they came from.

    Attributes:
        anchors: (B, Q, 4) the top-k proposals' boxes (cxcywh in [0, 1]), detached: the positional queries.
        content: (B, Q, C) the learned content embeddings, the same for every image.
        logits / boxes: (B, Q, K) / (B, Q, 4) the encoder's class logits and boxes of the selected tokens, with
            gradients (the encoder's loss).
        indices: (B, Q) the selected tokens' positions in the flattened multi-scale sequence.
    """

    anchors: torch.Tensor
    content: torch.Tensor
    logits: torch.Tensor
    boxes: torch.Tensor
    indices: torch.Tensor


def class_head(hidden_dim: int, num_classes: int, prior: float = 0.01) -> nn.Linear:
    """A linear classifier whose sigmoid starts at ``prior`` for every class (focal-loss initialisation)."""
    head = nn.Linear(hidden_dim, num_classes)
    nn.init.constant_(head.bias, -torch.log(torch.tensor((1 - prior) / prior)).item())
    return head


def box_head(hidden_dim: int) -> DeformableDetrMLPPredictionHead:
    """The 3-layer box MLP, last layer zeroed so that a fresh head keeps its reference box."""
    head = DeformableDetrMLPPredictionHead(hidden_dim, hidden_dim, 4, num_layers=3)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head


class MixedQuerySelection(nn.Module):
    """Encoder proposals scored by their own class / box heads; the top ``num_queries`` become anchors, the content
    queries are ``content`` (an ``nn.Embedding`` of ``num_queries`` rows)."""

    # Hugging Face's proposal generator; it reads ``self.enc_output`` and ``self.enc_output_norm``.
    gen_encoder_output_proposals = DeformableDetrModel.gen_encoder_output_proposals

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.enc_output = nn.Linear(hidden_dim, hidden_dim)
        self.enc_output_norm = nn.LayerNorm(hidden_dim)
        self.class_head = class_head(hidden_dim, num_classes)
        self.box_head = box_head(hidden_dim)
        self.content = nn.Embedding(num_queries, hidden_dim)
        nn.init.xavier_uniform_(self.content.weight)  # DINO's (its transformer's reset covers ``tgt_embed``)

    def forward(
        self, memory: torch.Tensor, valid: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> SelectedQueries:
        """``memory`` (B, N, C): the encoder's output; ``valid`` (B, N): False on padding tokens."""
        tokens, proposals = self.gen_encoder_output_proposals(memory, ~valid, spatial_shapes)
        logits = self.class_head(tokens)
        coords = self.box_head(tokens) + proposals  # inverse-sigmoid space; +inf at invalid tokens
        k = min(self.num_queries, memory.shape[1])  # tiny inputs can have fewer tokens than queries
        indices = logits.max(-1).values.topk(k, dim=1).indices
        boxes = torch.gather(coords, 1, indices[..., None].expand(-1, -1, 4)).sigmoid()
        selected_logits = torch.gather(logits, 1, indices[..., None].expand(-1, -1, logits.shape[-1]))
        content = self.content.weight[:k].expand(memory.shape[0], -1, -1)
        return SelectedQueries(boxes.detach(), content, selected_logits, boxes, indices)
