"""IoU with the original's clamping of the prediction, Acc@0.5 / Acc@0.75 / mIoU, per-group summaries."""
import pytest
import torch

from evaluation.box_metrics import prediction_ious, summarize, summarize_by_group


def cxcywh(x1, y1, x2, y2):
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def test_iou_clamps_prediction_to_canvas_only():
    gt = torch.tensor([cxcywh(0.0, 0.0, 0.5, 0.5), cxcywh(0.5, 0.5, 1.0, 1.0), cxcywh(0.2, 0.2, 0.4, 0.4)])
    pred = torch.tensor([cxcywh(-0.5, -0.5, 0.5, 0.5),  # clamped to the ground truth exactly
                         cxcywh(0.5, 0.5, 1.0, 1.0),
                         cxcywh(0.3, 0.2, 0.5, 0.4)])  # half overlap: 0.02 / 0.06
    torch.testing.assert_close(prediction_ious(pred, gt), torch.tensor([1.0, 1.0, 1 / 3]))


def test_summaries():
    ious = [0.9, 0.6, 0.5, 0.3, 0.0]
    stats = summarize(ious)
    assert stats == {"accu": pytest.approx(0.6), "accu@0.75": pytest.approx(0.2), "miou": pytest.approx(0.46),
                     "count": 5}
    by_group = summarize_by_group(ious, ["a", "b", "a", "b", "b"])
    assert by_group["a"]["accu"] == 1.0 and by_group["b"]["accu"] == pytest.approx(1 / 3)
    assert by_group["a"]["count"] + by_group["b"]["count"] == 5
