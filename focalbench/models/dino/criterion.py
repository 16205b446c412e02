"""DINO's training loss: the Deformable DETR set loss on every output DINO trains.

From Hugging Face ``transformers``: the Hungarian matcher with the focal class cost
(``DeformableDetrHungarianMatcher``) and the losses of a matched set (``DeformableDetrImageLoss``: sigmoid focal
loss over all queries × classes, L1 and GIoU on the matched boxes). DINO's own, here: which outputs are trained and
how the denoising ones are matched. The matching queries of every decoder layer (the last, and the others as
auxiliary losses) and the encoder's selected proposals are matched to the ground truth by the Hungarian matcher; the
denoising queries of every layer are matched by construction (each positive copy to its ground truth, negatives and
padding to "no object"), normalised by the number of boxes × the number of groups.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss

Matches = list[tuple[torch.Tensor, torch.Tensor]]


class DINOCriterion(nn.Module):
    """Weighted losses ``loss_{ce,bbox,giou}`` of the last layer, ``…_{i}`` of the earlier layers, ``…_enc`` of the
    encoder proposals, ``…_dn`` / ``…_dn_{i}`` of the denoising queries (DINO's names, as its logs show them).

    Args:
        num_classes: K (labels 0..K-1).
        class_weight / bbox_weight / giou_weight: loss weights (DINO: 1, 5, 2).
        match_class / match_bbox / match_giou: matching costs (DINO: 2, 5, 2).
        focal_alpha: focal loss α (0.25).
    """

    def __init__(
        self,
        num_classes: int,
        class_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        match_class: float = 2.0,
        match_bbox: float = 5.0,
        match_giou: float = 2.0,
        focal_alpha: float = 0.25,
    ) -> None:
        super().__init__()
        self.matcher = DeformableDetrHungarianMatcher(
            class_cost=match_class, bbox_cost=match_bbox, giou_cost=match_giou
        )
        self.set_loss = DeformableDetrImageLoss(self.matcher, num_classes, focal_alpha, losses=["labels", "boxes"])
        self.weights = {"loss_ce": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}

    def _weighted(self, output: dict, targets: list[dict], matches: Matches, num_boxes: float, suffix: str) -> dict:
        losses = {}
        for kind in ("labels", "boxes"):
            losses.update(self.set_loss.get_loss(kind, output, targets, matches, num_boxes))
        return {f"{name}{suffix}": self.weights[name] * value for name, value in losses.items()}

    @staticmethod
    def num_boxes(targets: list[dict], device: torch.device) -> float:
        """Boxes per process averaged over the DDP ranks (at least 1), DETR's normaliser."""
        count = torch.tensor(float(sum(len(t["class_labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return max(count.item(), 1.0)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """``outputs``: :class:`~focalbench.models.dino.detector.DINO`'s training outputs; ``targets``: per image
        ``class_labels`` (0..K-1) and ``boxes`` (cxcywh in [0, 1] of the unpadded image)."""
        logits, boxes = outputs["logits"], outputs["boxes"]  # (L, B, Q, K), (L, B, Q, 4): matching queries
        num_boxes = self.num_boxes(targets, logits.device)
        losses = {}
        layers = len(logits)
        for i in range(layers):
            output = {"logits": logits[i], "pred_boxes": boxes[i]}
            suffix = "" if i == layers - 1 else f"_{i}"
            losses.update(self._weighted(output, targets, self.matcher(output, targets), num_boxes, suffix))
        encoder = {"logits": outputs["enc_logits"], "pred_boxes": outputs["enc_boxes"]}
        losses.update(self._weighted(encoder, targets, self.matcher(encoder, targets), num_boxes, "_enc"))
        denoising = outputs.get("denoising")
        if denoising is not None:
            dn_logits, dn_boxes = outputs["dn_logits"], outputs["dn_boxes"]
            for i in range(layers):
                output = {"logits": dn_logits[i], "pred_boxes": dn_boxes[i]}
                suffix = "_dn" if i == layers - 1 else f"_dn_{i}"
                scale = num_boxes * denoising.num_groups
                losses.update(self._weighted(output, targets, denoising.matches, scale, suffix))
        return losses
