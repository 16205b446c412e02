"""Panoptic quality (Kirillov et al., 2019) as the COCO panoptic evaluation computes it (``panopticapi``'s
``pq_compute``), summed over a whole split and across DDP ranks.

Per image, segments are matched only within a class, when their IoU exceeds 0.5 (then the match is unique). Void
ground-truth pixels (id 0) leave the union: ``IoU = |P ∩ G| / (|P| + |G| - |P ∩ G| - |P ∩ void|)``. Crowd segments
never match; a ground-truth segment left unmatched is a false negative unless it is a crowd; a prediction left
unmatched is a false positive unless more than half of it lies in void or in crowd regions of its own class.
Per class ``PQ = Σ IoU(TP) / (TP + ½FP + ½FN)``, ``SQ = Σ IoU(TP) / TP`` (0 without TP), ``RQ = TP / (TP + ½FP +
½FN)``; classes with no TP, FP or FN in the whole split are absent (NaN) and left out of the averages over all, thing
and stuff classes. torchmetrics' ``PanopticQuality`` has no crowd rule, hence this metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

OFFSET = 256**3  # larger than any COCO panoptic segment id (R + 256 G + 256² B)


def panoptic_scores(iou_sum: Tensor, tp: Tensor, fp: Tensor, fn: Tensor, things: Tensor) -> dict[str, Tensor]:
    """PQ / SQ / RQ per class (NaN for absent classes) and their means over all, thing and stuff classes present,
    as fractions in [0, 1] (COCO prints them ×100)."""
    iou_sum, tp, fp, fn = iou_sum.double(), tp.double(), fp.double(), fn.double()
    present = (tp + fp + fn) > 0
    denominator = (tp + 0.5 * fp + 0.5 * fn).clamp(min=1e-12)
    nan = torch.full_like(iou_sum, float("nan"))
    pq = torch.where(present, iou_sum / denominator, nan)
    sq = torch.where(present, torch.where(tp > 0, iou_sum / tp.clamp(min=1), torch.zeros_like(tp)), nan)
    rq = torch.where(present, tp / denominator, nan)
    out = {"PQ_class": pq.float(), "SQ_class": sq.float(), "RQ_class": rq.float()}
    for name, keep in (("", torch.ones_like(present)), ("_things", things), ("_stuff", ~things)):
        for key, value in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
            out[key + name] = value[keep & present].mean().float()  # NaN when no class of the group is present
    return out


def _segments(info: Sequence[Mapping], name: str) -> dict[int, tuple[int, bool]]:
    segments: dict[int, tuple[int, bool]] = {}
    for segment in info:
        if "id" not in segment or "category_id" not in segment:
            raise ValueError(f"{name} segment {dict(segment)} needs 'id' and 'category_id'")
        segments[int(segment["id"])] = (int(segment["category_id"]), bool(segment.get("iscrowd", False)))
    return segments


class PanopticQuality(Metric):
    """PQ, SQ, RQ over a split (see the module docstring). ``update`` takes one image or a list of images: segment
    id maps (``H×W`` integers; ground truth 0 = void, prediction ``≤ 0`` = no segment) and their ``segments_info``
    (dicts with ``id``, ``category_id`` as a class index 0..num_classes-1, and ``iscrowd`` for the ground truth).
    State: per class the IoU sum and the TP / FP / FN counts, summed across processes. ``compute`` returns
    :func:`panoptic_scores`.

    Args:
        things: per class, True for thing classes (countable objects), False for stuff.
    """

    full_state_update = False

    def __init__(self, things: Sequence[bool], **kwargs) -> None:
        super().__init__(**kwargs)
        k = len(things)
        self.register_buffer("things", torch.tensor([bool(t) for t in things]), persistent=False)
        self.add_state("iou_sum", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        pred_ids: Tensor | Sequence[Tensor],
        pred_segments: Sequence[Mapping] | Sequence[Sequence[Mapping]],
        target_ids: Tensor | Sequence[Tensor],
        target_segments: Sequence[Mapping] | Sequence[Sequence[Mapping]],
    ) -> None:
        if isinstance(pred_ids, Tensor) and pred_ids.dim() == 2:
            pred_ids, pred_segments = [pred_ids], [pred_segments]
            target_ids, target_segments = [target_ids], [target_segments]
        for p_ids, p_info, t_ids, t_info in zip(pred_ids, pred_segments, target_ids, target_segments):
            self._update_image(p_ids, p_info, t_ids, t_info)

    def _update_image(
        self, pred_ids: Tensor, pred_info: Sequence[Mapping], gt_ids: Tensor, gt_info: Sequence[Mapping]
    ) -> None:
        if pred_ids.shape != gt_ids.shape:
            raise ValueError(f"prediction {tuple(pred_ids.shape)} and ground truth {tuple(gt_ids.shape)} differ")
        k = len(self.things)
        gt_segments, pred_segments = _segments(gt_info, "ground-truth"), _segments(pred_info, "predicted")
        for name, segments in (("ground-truth", gt_segments), ("predicted", pred_segments)):
            bad = [c for c, _ in segments.values() if not 0 <= c < k]
            if bad:
                raise ValueError(f"{name} category ids {bad} outside the {k} classes 0..{k - 1}")
        gt = gt_ids.long().flatten().cpu()
        pred = pred_ids.long().flatten().cpu().clamp(min=0)  # no segment (0 or -1) is void in the prediction
        pairs, counts = torch.unique(gt * OFFSET + pred, return_counts=True)
        overlap = {(int(p) // OFFSET, int(p) % OFFSET): int(c) for p, c in zip(pairs, counts)}
        gt_area: dict[int, int] = {}
        pred_area: dict[int, int] = {}
        for (g, p), c in overlap.items():
            gt_area[g] = gt_area.get(g, 0) + c
            pred_area[p] = pred_area.get(p, 0) + c
        for name, area, segments in (("ground-truth", gt_area, gt_segments), ("predicted", pred_area, pred_segments)):
            unknown = [i for i in area if i != 0 and i not in segments]
            if unknown:
                raise ValueError(f"{name} segment ids {unknown[:5]} appear in the id map but not in segments_info")

        iou_sum = torch.zeros(k, dtype=torch.float64)
        tp, fp, fn = (torch.zeros(k, dtype=torch.long) for _ in range(3))
        matched_gt, matched_pred = set(), set()
        for (g, p), intersection in overlap.items():
            if g == 0 or p == 0:
                continue
            (g_class, g_crowd), (p_class, _) = gt_segments[g], pred_segments[p]
            if g_crowd or g_class != p_class:
                continue
            union = pred_area[p] + gt_area[g] - intersection - overlap.get((0, p), 0)
            iou = intersection / union
            if iou > 0.5:
                tp[g_class] += 1
                iou_sum[g_class] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        crowd_by_class: dict[int, list[int]] = {}
        for g, (g_class, g_crowd) in gt_segments.items():
            if g_crowd:
                crowd_by_class.setdefault(g_class, []).append(g)
            elif g not in matched_gt:
                fn[g_class] += 1  # also a segment with no pixel left (all cropped away) counts, as in panopticapi
        for p, (p_class, _) in pred_segments.items():
            if p in matched_pred or p not in pred_area:
                continue
            ignored = overlap.get((0, p), 0) + sum(overlap.get((g, p), 0) for g in crowd_by_class.get(p_class, []))
            if ignored / pred_area[p] > 0.5:
                continue
            fp[p_class] += 1
        self.iou_sum += iou_sum.to(self.iou_sum.device)
        self.tp += tp.to(self.tp.device)
        self.fp += fp.to(self.fp.device)
        self.fn += fn.to(self.fn.device)

    def compute(self) -> dict[str, Tensor]:
        return panoptic_scores(self.iou_sum, self.tp, self.fp, self.fn, self.things.to(self.tp.device))
