"""Panoptic quality against a case computed by hand: void, a crowd region, unmatched predictions, an absent class."""

from __future__ import annotations

import math

import pytest
import torch

from focalbench.tasks.panoptic_quality import PanopticQuality

# classes: 0 car (thing), 1 person (thing), 2 sky (stuff), 3 road (stuff), 4 grass (stuff, in no image)
THINGS = [True, True, False, False, False]

GT = torch.tensor(
    [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 0, 0, 3, 3],
        [2, 2, 2, 0, 3, 3],
        [6, 6, 4, 4, 4, 4],
    ]
)
GT_INFO = [
    {"id": 1, "category_id": 2},  # sky, 8 px
    {"id": 2, "category_id": 0},  # car, 3 px
    {"id": 3, "category_id": 0, "iscrowd": 1},  # a crowd of cars, 4 px
    {"id": 4, "category_id": 1},  # person, 4 px
    {"id": 6, "category_id": 3},  # road, 2 px
]  # 0 = void, 3 px
PRED = torch.tensor(
    [
        [1, 1, 1, 1, 5, 5],
        [1, 1, 6, 6, 3, 3],
        [2, 2, 2, 2, 3, 4],
        [2, 2, 4, 4, 4, 4],
    ]
)
PRED_INFO = [
    {"id": 1, "category_id": 2},  # sky, 6 px
    {"id": 2, "category_id": 0},  # car, 6 px
    {"id": 3, "category_id": 0},  # car, 3 px, all inside the car crowd
    {"id": 4, "category_id": 1},  # person, 5 px
    {"id": 5, "category_id": 1},  # person, 2 px, on sky
    {"id": 6, "category_id": 0},  # car, 2 px, all in void
]


def test_hand_computed_case():
    metric = PanopticQuality(THINGS)
    metric.update(PRED, PRED_INFO, GT, GT_INFO)
    # sky: pred 1 ∩ gt 1 = 6, union = 6 + 8 - 6 - 0 (pred in void) = 8, IoU 0.75 -> TP
    # car: pred 2 ∩ gt 2 = 3, pred 2 in void = 1 (row 2, col 3), union = 6 + 3 - 3 - 1 = 5, IoU 0.6 -> TP
    #      (without removing void from the union it would be 3 / 6 = 0.5, no match)
    #      pred 3 lies 3/3 in the car crowd -> no FP; pred 6 lies 2/2 in void -> no FP; the crowd is no FN
    # person: pred 4 ∩ gt 4 = 4, union = 5 + 4 - 4 = 5, IoU 0.8 -> TP; pred 5 (on sky, no person crowd) -> FP
    # road: gt 6 covered by a car prediction -> FN; grass: nothing anywhere -> absent
    assert metric.tp.tolist() == [1, 1, 1, 0, 0]
    assert metric.fp.tolist() == [0, 1, 0, 0, 0]
    assert metric.fn.tolist() == [0, 0, 0, 1, 0]
    scores = metric.compute()
    # per class PQ = ΣIoU / (TP + FP/2 + FN/2): car 0.6/1, person 0.8/1.5, sky 0.75/1, road 0/0.5, grass NaN
    expected_pq = [0.6, 0.8 / 1.5, 0.75, 0.0]
    assert scores["PQ_class"][:4].tolist() == pytest.approx(expected_pq, abs=1e-6)
    assert math.isnan(scores["PQ_class"][4])
    # SQ = ΣIoU / TP (0 without TP), RQ = TP / (TP + FP/2 + FN/2)
    assert scores["SQ_class"][:4].tolist() == pytest.approx([0.6, 0.8, 0.75, 0.0], abs=1e-6)
    assert scores["RQ_class"][:4].tolist() == pytest.approx([1.0, 1 / 1.5, 1.0, 0.0], abs=1e-6)
    # averages over the four present classes; things = car, person; stuff = sky, road (grass absent)
    assert scores["PQ"].item() == pytest.approx((0.6 + 0.8 / 1.5 + 0.75 + 0.0) / 4, abs=1e-6)  # 0.470833
    assert scores["PQ_things"].item() == pytest.approx((0.6 + 0.8 / 1.5) / 2, abs=1e-6)  # 0.566667
    assert scores["PQ_stuff"].item() == pytest.approx((0.75 + 0.0) / 2, abs=1e-6)  # 0.375
    assert scores["SQ"].item() == pytest.approx((0.6 + 0.8 + 0.75 + 0.0) / 4, abs=1e-6)  # 0.5375
    assert scores["RQ"].item() == pytest.approx((1 + 1 / 1.5 + 1 + 0) / 4, abs=1e-6)  # 0.666667


def test_crowd_only_excuses_its_own_class():
    # pred 3 relabelled person: it lies in a *car* crowd, so it is a person false positive
    info = [dict(s, category_id=1) if s["id"] == 3 else s for s in PRED_INFO]
    metric = PanopticQuality(THINGS)
    metric.update(PRED, info, GT, GT_INFO)
    assert metric.fp.tolist() == [0, 2, 0, 0, 0]


def test_split_is_summed_across_images_and_processes():
    # two "ranks" each see the image once; merged, every count doubles and the scores stay the same
    rank0, rank1, single = PanopticQuality(THINGS), PanopticQuality(THINGS), PanopticQuality(THINGS)
    for metric in (rank0, rank1, single):
        metric.update(PRED, PRED_INFO, GT, GT_INFO)
    rank0.merge_state(rank1)  # what the sum reduction of the DDP sync does
    assert rank0.tp.tolist() == [2, 2, 2, 0, 0] and rank0.fn.tolist() == [0, 0, 0, 2, 0]
    assert rank0.compute()["PQ"].item() == pytest.approx(single.compute()["PQ"].item())


def test_bad_input_names_the_problem():
    metric = PanopticQuality(THINGS)
    with pytest.raises(ValueError, match=r"segment ids \[6\] appear in the id map but not in segments_info"):
        metric.update(PRED, PRED_INFO[:-1], GT, GT_INFO)
    with pytest.raises(ValueError, match="outside the 5 classes"):
        metric.update(PRED, [dict(s, category_id=7) for s in PRED_INFO], GT, GT_INFO)
