"""Contrastive denoising (CDN), DINO's first addition to Deformable DETR (Zhang et al., ICLR 2023, Sec. 3.3).

Each training image's ground truth is copied into ``G`` groups of ``2 * max_gt`` extra decoder queries: the first
``max_gt`` of a group are *positive* copies (box corners moved by less than ``box_noise_scale`` × half the box size,
to be reconstructed into their ground truth), the next ``max_gt`` *negative* copies (moved by between 1× and 2×
that, to be classified as "no object"); labels are flipped to a random class with probability
``label_noise_ratio / 2``. ``G = num_dn_queries // max_gt``, so ``num_dn_queries = 100`` gives about 100 positive
and 100 negative queries, as DINO's ``prepare_for_cdn``. The noising and the group layout are RT-DETR's
``get_contrastive_denoising_training_group`` (Hugging Face ``transformers``), which implements DINO's scheme;
here its output is put into the form the decoder takes: anchors in box space, the self-attention mask as booleans,
and the query index of every positive copy with its ground-truth index (the reconstruction targets).

The attention mask (``True`` = may not attend) keeps the matching queries from seeing any denoising query (they
would read the ground truth off them) and each denoising group from seeing the other groups; denoising queries may
see the matching queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.loss.loss_rt_detr import RTDetrLoss
from transformers.models.rt_detr.modeling_rt_detr import get_contrastive_denoising_training_group


@dataclass
class DenoisingQueries:
    """The denoising part of the decoder's queries, which precede the matching queries.

    Attributes:
        content: (B, D, C) label embeddings of the (possibly flipped) labels; padding slots embed class ``K``.
        anchors: (B, D, 4) noised boxes, cxcywh in [0, 1].
        blocked: (D + Q, D + Q) boolean self-attention mask, ``True`` where query (row) may not see key (column).
        matches: per image ``(query indices, ground-truth indices)`` of the positive copies, all groups.
        num_groups: G; the reconstruction losses are normalised by ``G × number of boxes``.
    """

    content: torch.Tensor
    anchors: torch.Tensor
    blocked: torch.Tensor
    matches: list[tuple[torch.Tensor, torch.Tensor]]
    num_groups: int

    @property
    def num_queries(self) -> int:
        return self.content.shape[1]


def contrastive_denoising(
    targets: list[dict],
    num_classes: int,
    num_matching_queries: int,
    label_embedding: nn.Embedding,
    num_dn_queries: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 0.4,
) -> DenoisingQueries | None:
    """CDN queries for ``targets`` (per image ``class_labels`` in 0..K-1 and ``boxes`` cxcywh in [0, 1]), or None when
    the batch holds no box or ``num_dn_queries`` is 0. ``label_embedding`` has ``K + 1`` rows (the last one embeds
    the padding slots of images with fewer than ``max_gt`` boxes)."""
    content, anchors, mask, meta = get_contrastive_denoising_training_group(
        targets,
        num_classes,
        num_matching_queries,
        label_embedding,
        num_denoising_queries=num_dn_queries,
        label_noise_ratio=label_noise_ratio,
        box_noise_scale=box_noise_scale,
    )
    if content is None:
        return None
    # RT-DETR hands back inverse-sigmoid boxes only when it noised them
    anchors = anchors.sigmoid() if box_noise_scale > 0 else anchors
    return DenoisingQueries(
        content=content,
        anchors=anchors,
        blocked=torch.isinf(mask),
        matches=RTDetrLoss.get_cdn_matched_indices(meta, targets),
        num_groups=int(meta["dn_num_group"]),
    )
