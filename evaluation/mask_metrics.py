"""Referring-segmentation metrics (docs/evaluation.md, "Mask metrics"): per-expression IoU of a binary mask with the
ground-truth mask at the image's resolution, summarised as mIoU (mean of the per-expression IoUs), oIoU (cumulative
intersection over cumulative union) and Prec@0.5:0.9 (fraction of expressions with IoU at least each threshold).

Three masks are scored side by side: the model's segmentation map thresholded ("mask"), its predicted box filled
("pred_box_mask", what any box-only model gives), and the ground-truth box filled ("gt_box_mask", what box
supervision aims at); with a refinement (evaluation.mask_refine) a fourth, "<method>_mask"."""
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.transforms import canvas_map_to_image, canvas_to_image, eval_placement
from evaluation.mask_boxes import boxes_from_mask
from evaluation.mask_refine import refine_mask
from evaluation.segmentation_map import canvas_probabilities

MAPS = ("mask", "pred_box_mask", "gt_box_mask")
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def box_mask(box, height, width):
    """A box x1, y1, x2, y2 filled: the pixels whose centre lies inside it, bool [height, width]; None: no pixel."""
    if box is None:
        return np.zeros((height, width), bool)
    x1, y1, x2, y2 = (float(v) for v in box)
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    return ((ys >= y1) & (ys <= y2))[:, None] & ((xs >= x1) & (xs <= x2))[None, :]


def intersection_union(pred, gt):
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def summarize_masks(terms):
    """[(intersection, union)] -> {"miou", "oiou", "prec@0.5", ..., "prec@0.9", "count"}. An expression whose two
    masks are both empty has IoU 1 (they agree); oIoU is 1 when every union is empty."""
    if not terms:
        return {"miou": float("nan"), "oiou": float("nan"), **{f"prec@{t}": float("nan") for t in
                                                             PRECISION_THRESHOLDS}, "count": 0}
    inter = np.array([i for i, _ in terms], np.float64)
    union = np.array([u for _, u in terms], np.float64)
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    stats = {"miou": float(ious.mean()), "oiou": float(inter.sum() / union.sum()) if union.sum() else 1.0}
    stats.update({f"prec@{t}": float((ious >= t).mean()) for t in PRECISION_THRESHOLDS})
    stats["count"] = len(terms)
    return stats


def summarize_mask_results(per_sample, types=None):
    """per_sample: [{map name: (intersection, union)}] (None where a sample has no ground-truth mask); types:
    the samples' expression types or None. -> {map name: summary, with "by_type" when types are given}."""
    kept = [(k, terms) for k, terms in enumerate(per_sample) if terms is not None]
    stats = {}
    for name in (kept[0][1] if kept else MAPS):
        stats[name] = summarize_masks([terms[name] for _, terms in kept])
        if types is not None:
            groups = defaultdict(list)
            for k, terms in kept:
                groups[types[k]].append(terms[name])
            stats[name]["by_type"] = {t: summarize_masks(v) for t, v in sorted(groups.items())}
    return stats


class MaskScorer:
    """Per evaluated sample: the evaluation map upsampled to the canvas, mapped back to the image and thresholded at
    `threshold`; its three masks scored against the ground-truth mask at the image's resolution (when the sample has
    one and `score`), and with save_dir the binary mask written as <save_dir>/masks/<index>.png (and the probability
    map, 0-255, as <save_dir>/probabilities/<index>.png with save_probabilities). refine: a evaluation.mask_refine method
    whose mask is scored (and saved, to <save_dir>/masks_<method>) beside the model's; its seconds are counted.
    component_area: not None, the mask's connected components of at least this fraction of the image are also read
    as scored boxes (evaluation.mask_boxes)."""

    def __init__(self, dataset, args, threshold, score=True, save_dir=None, save_probabilities=False, refine="none",
                 component_area=None):
        self.dataset = dataset
        self.args = args
        self.threshold = threshold
        self.score = score
        self.save_dir = Path(save_dir) if save_dir else None
        self.save_probabilities = save_probabilities
        self.refine = refine
        self.refine_seconds = 0.0
        self.refined = 0
        self.placements = {}
        self.component_area = component_area

    def mask_path(self, index, kind="masks"):
        return self.save_dir / kind / f"{index:06d}.png"

    def __call__(self, index, seg_logits, box_cxcywh):
        """seg_logits [g, g], box_cxcywh [4] on the canvas -> {map name: (intersection, union)} or None."""
        return self.score_sample(index, seg_logits, box_cxcywh)[0]

    def score_sample(self, index, seg_logits, box_cxcywh):
        """-> (__call__'s terms, the mask's component boxes [[x1, y1, x2, y2, score]] or None)."""
        gt = self.dataset.gt_mask(index) if self.score else None
        if gt is None and self.save_dir is None and self.component_area is None:
            return None, None
        if gt is not None:
            height, width = gt.shape
        else:
            width, height = self.dataset.image_size(index)
        if (width, height) not in self.placements:
            self.placements[width, height] = eval_placement(width, height, self.args)
        placement = self.placements[width, height]
        prob = canvas_probabilities(seg_logits[None].float(), self.args.imsize)[0]
        prob = canvas_map_to_image(prob, placement, (width, height)).numpy()
        model = prob > self.threshold
        components = None if self.component_area is None else boxes_from_mask(prob, self.threshold,
                                                                              self.component_area)
        cx, cy, w, h = box_cxcywh.tolist()
        canvas_box = torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]]).clamp(0, 1) * self.args.imsize
        pred_box = canvas_to_image(canvas_box, placement, (width, height))[0]
        refined = None
        if self.refine != "none":
            start = time.perf_counter()
            refined = refine_mask(self.refine, self.dataset.load_image(index), pred_box.tolist(), prob, self.threshold)
            self.refine_seconds += time.perf_counter() - start
            self.refined += 1
        if self.save_dir is not None:
            save_png(model.astype(np.uint8) * 255, self.mask_path(index))
            if self.save_probabilities:
                save_png(np.round(prob * 255).astype(np.uint8), self.mask_path(index, "probabilities"))
            if refined is not None:
                save_png(refined.astype(np.uint8) * 255, self.mask_path(index, f"masks_{self.refine}"))
        if gt is None:
            return None, components
        info = self.dataset.sample_info(index)
        gt_boxes = np.zeros((height, width), bool)
        for box in info.get("boxes", [info["box"]]):
            gt_boxes |= box_mask(box, height, width)
        terms = {"mask": intersection_union(model, gt),
                 "pred_box_mask": intersection_union(box_mask(pred_box, height, width), gt),
                 "gt_box_mask": intersection_union(gt_boxes, gt)}
        if refined is not None:
            terms[f"{self.refine}_mask"] = intersection_union(refined, gt)
        return terms, components

    def refine_cost(self):
        """{"method", "ms_per_expression", "count"} of the refinement in this process, or None without one."""
        if self.refine == "none":
            return None
        return {"method": self.refine, "ms_per_expression": 1000 * self.refine_seconds / max(self.refined, 1),
                "count": self.refined}


def save_png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
