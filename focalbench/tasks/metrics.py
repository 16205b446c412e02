"""Metric definitions shared by the tasks and the pictures drawn from them."""

from __future__ import annotations

from torch import Tensor


def segmentation_scores(confusion: Tensor) -> dict[str, Tensor]:
    """mmseg's metrics from a confusion matrix summed over a whole split (rows: true class, columns: predicted;
    ignored pixels never counted). Per class, with P the predicted and G the true pixels of the class:
    ``IoU = |P ∩ G| / |P ∪ G|`` and ``Acc = |P ∩ G| / |G|``, NaN where the denominator is 0 (a class absent from
    the ground truth and the predictions, resp. from the ground truth); ``mIoU``, ``mAcc`` their NaN-means;
    ``aAcc = Σ|P ∩ G| / Σ|G|``. Fractions in [0, 1] (mmseg prints them ×100)."""
    confusion = confusion.double()
    intersection = confusion.diag()
    label_area = confusion.sum(1)
    union = label_area + confusion.sum(0) - intersection
    iou, acc = intersection / union, intersection / label_area  # 0 / 0 = NaN: left out of the means
    return {
        "IoU": iou.float(),
        "Acc": acc.float(),
        "mIoU": iou.nanmean().float(),
        "mAcc": acc.nanmean().float(),
        "aAcc": (intersection.sum() / label_area.sum().clamp(min=1)).float(),
    }
