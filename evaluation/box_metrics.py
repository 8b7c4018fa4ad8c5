"""Grounding metrics (docs/original.md, "Metrics"): per-sample IoU of the predicted box, Acc@0.5, Acc@0.75 and mean
IoU."""
from collections import defaultdict

import torch
from torchvision.ops import box_convert, box_iou

THRESHOLDS = (0.5, 0.75)


def prediction_ious(pred_boxes, target):
    """pred_boxes, target: [B, 4] normalised cx,cy,w,h on the canvas -> IoU [B].

    The prediction is clamped to the canvas as in the original; the ground truth is not.
    """
    pred = box_convert(pred_boxes.float(), "cxcywh", "xyxy").clamp(0, 1)
    gt = box_convert(target.float(), "cxcywh", "xyxy")
    return box_iou(pred, gt).diagonal()


def summarize(ious):
    """list or tensor of IoUs -> {"accu": Acc@0.5, "accu@0.75", "miou", "count"}."""
    ious = torch.as_tensor(ious, dtype=torch.float64)
    if ious.numel() == 0:
        return {"accu": float("nan"), "accu@0.75": float("nan"), "miou": float("nan"), "count": 0}
    stats = {("accu" if t == 0.5 else f"accu@{t}"): (ious >= t).double().mean().item() for t in THRESHOLDS}
    stats.update(miou=ious.mean().item(), count=ious.numel())
    return stats


def summarize_by_group(ious, groups):
    """ious and groups aligned -> {group: summarize(...)} for each distinct group name."""
    by_group = defaultdict(list)
    for iou, group in zip(ious, groups):
        by_group[group].append(iou)
    return {group: summarize(values) for group, values in sorted(by_group.items())}

