"""GRES, GREC, the presence AUROC and boxes read off a mask, each against a small case worked out by hand."""
import math

import numpy as np
import pytest

from evaluation.generalized_metrics import auroc, grec, gres, summarize_generalized
from evaluation.mask_boxes import boxes_from_mask

# (n_targets, found, intersection, union): one expression per branch of ReLA's evaluation.
GRES_CASE = [
    (0, False, 0, 5),  # no target, not found: right, IoU 1, nothing added to the sums
    (0, True, 0, 8),  # no target, found: IoU 0, its predicted area (8) joins the cumulative union
    (1, True, 6, 10),  # found: IoU 0.6
    (2, False, 9, 10),  # several targets, not found: intersection counted as 0, union kept
    (1, True, 9, 10),  # IoU 0.9
]


def test_gres_by_hand():
    stats = gres(GRES_CASE)
    assert stats["giou"] == pytest.approx((1 + 0 + 0.6 + 0 + 0.9) / 5)
    assert stats["ciou"] == pytest.approx((6 + 9) / (8 + 10 + 10 + 10))
    assert stats["n_acc"] == pytest.approx(1 / 2)
    assert stats["t_acc"] == pytest.approx(2 / 3)
    # Targeted IoUs 0.6, 0 and 0.9.
    assert (stats["pr@0.7"], stats["pr@0.8"], stats["pr@0.9"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert stats["count"] == 5


TWO = [[0, 0, 10, 10], [20, 0, 30, 10]]
# (targets, kept boxes)
GREC_CASE = [
    ([], []),  # no target, no box: right
    ([], [[0, 0, 5, 5]]),  # no target, a box: wrong
    (TWO, TWO[::-1]),  # both found, one-to-one: F1 = 1
    (TWO, [TWO[0]]),  # one of two: precision 1, recall 1/2, F1 2/3
    ([TWO[0]], []),  # a target, nothing kept
    ([TWO[0]], [[0, 0, 10, 6]]),  # IoU = GIoU = 0.6
    ([TWO[0]], [[0, 0, 6, 12]]),  # IoU 60/112 = 0.536, GIoU 0.536 - 8/120 = 0.469: only IoU matches
]


def test_grec_by_hand_giou_as_the_official_code_and_iou_as_named():
    stats = grec(GREC_CASE)
    assert stats["pr_f1"] == pytest.approx(3 / 7)
    assert stats["n_acc"] == pytest.approx(1 / 2)
    assert stats["t_acc"] == pytest.approx(4 / 5)
    assert grec(GREC_CASE, match="iou")["pr_f1"] == pytest.approx(4 / 7)
    # Greedy one-to-one: two boxes on one target match once, so F1 < 1.
    assert grec([([TWO[0]], [TWO[0], [0, 0, 10, 9]])])["pr_f1"] == 0


def test_auroc_by_hand_with_a_tie():
    # Pairs (targeted, no target): 0.9>0.3, 0.9>0.8, 0.8>0.3, 0.8=0.8 (a half) -> 3.5 / 4.
    assert auroc([0.9, 0.8, 0.3, 0.8], [True, True, False, False]) == pytest.approx(0.875)
    assert math.isnan(auroc([0.1, 0.2], [True, True]))


def test_summary_rows_per_kind_and_the_threshold_sweep():
    expressions = []
    for (n, found, inter, union), present in zip(GRES_CASE, [0.2, 0.6, 0.9, 0.4, 0.7]):
        assert found == (present >= 0.5)
        gt = [[0, 0, 4, 4]] * n
        expressions.append({"n_targets": n, "gt_boxes": gt, "present": present, "terms": (inter, union),
                            "boxes": [[0, 0, 4, 4, 1.0]] * min(n, 1)})
    stats = summarize_generalized(expressions)
    assert stats["giou"] == pytest.approx(gres(GRES_CASE)["giou"])
    assert {k: s["count"] for k, s in stats["by_kind"].items()} == {"none": 2, "one": 2, "several": 1}
    assert stats["by_kind"]["none"]["n_acc"] == pytest.approx(0.5)
    assert stats["presence_auroc"] == pytest.approx(5 / 6)  # targeted 0.9, 0.4, 0.7 against 0.2 and 0.6
    at = {p["threshold"]: p for p in stats["presence_sweep"]}
    assert at[0.5]["giou"] == pytest.approx(stats["giou"]) and at[0.5]["n_acc"] == stats["n_acc"]
    assert at[0.1]["n_acc"] == 0 and at[0.1]["t_acc"] == 1  # everything found
    assert at[0.9]["t_acc"] == pytest.approx(1 / 3)  # only 0.9 passes 0.9
    # Without a presence head every phrase is found: no AUROC, no sweep.
    plain = summarize_generalized([{**e, "present": None} for e in expressions])
    assert plain["n_acc"] == 0 and plain["t_acc"] == 1 and "presence_sweep" not in plain


def test_boxes_from_mask_one_box_per_component_above_the_smallest_area():
    prob = np.zeros((40, 50), np.float32)
    prob[2:12, 3:13] = 0.9  # 100 px
    prob[20:30, 30:45] = 0.7  # 150 px
    prob[35, 2] = 0.99  # a speck: 1 px < 0.002 * 2000 = 4 px
    prob[20:30, 45:47] = 0.3  # below the threshold
    boxes = boxes_from_mask(prob, 0.5)
    assert boxes == [[3.0, 2.0, 13.0, 12.0, pytest.approx(0.9)], [30.0, 20.0, 45.0, 30.0, pytest.approx(0.7)]]
    # Touching objects merge: one component, one box.
    prob[12, 3:35] = 0.8
    prob[12:20, 33] = 0.8
    assert [box[:4] for box in boxes_from_mask(prob, 0.5)] == [[3.0, 2.0, 45.0, 30.0]]
