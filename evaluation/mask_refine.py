"""Training-free mask refinement (--mask_refine grabcut) for any checkpoint, official ones included: OpenCV's GrabCut
started from the predicted box (outside: background) and the model's map (inside the box: probable foreground
where the map says so, probable background elsewhere), on the box's neighbourhood at a bounded resolution
(docs/evaluation.md, "Mask refinement")."""
import cv2
import numpy as np

from .segmentation_map import MASK_THRESHOLD

REFINEMENTS = ("none", "grabcut")
MARGIN = 0.25  # of the box's size on each side: the background GrabCut learns its colours from
MAX_SIDE = 160  # pixels of the worked region's long side: bounds the cost per expression
ITERATIONS = 3


def add_mask_refine_flag(parser):
    """--mask_refine of eval.py, predict.py and app.py."""
    parser.add_argument("--mask_refine", default="none", choices=REFINEMENTS,
                        help="also refine each mask without training: grabcut = OpenCV's GrabCut from the predicted "
                             "box and the model's map (docs/evaluation.md); the model's own mask is kept as well")


def grabcut(rgb, box, prob, threshold=MASK_THRESHOLD, margin=MARGIN, max_side=MAX_SIDE, iterations=ITERATIONS):
    """rgb uint8 [H, W, 3]; box x1, y1, x2, y2 in its pixels; prob float [H, W] the model's map -> bool [H, W].

    Falls back to the map thresholded where GrabCut has nothing to work with (a box that covers the whole
    neighbourhood leaves no background; an empty box no foreground) and where it ends with no foreground at all (its
    colour models can give the whole box to the background, as on a third of the demo's flat-coloured images)."""
    height, width = prob.shape
    fallback = prob > threshold
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = x2 - x1, y2 - y1
    if bw < 1 or bh < 1:
        return fallback
    left, top = max(0, int(x1 - margin * bw)), max(0, int(y1 - margin * bh))
    right, bottom = min(width, int(np.ceil(x2 + margin * bw))), min(height, int(np.ceil(y2 + margin * bh)))
    scale = min(1.0, max_side / max(right - left, bottom - top))
    size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    crop = cv2.resize(np.ascontiguousarray(rgb[top:bottom, left:right]), size, interpolation=cv2.INTER_AREA)
    crop_prob = cv2.resize(prob[top:bottom, left:right].astype(np.float32), size, interpolation=cv2.INTER_LINEAR)

    mask = np.full(crop_prob.shape, cv2.GC_BGD, np.uint8)
    bx1, by1 = int((x1 - left) * scale), int((y1 - top) * scale)
    bx2, by2 = int(np.ceil((x2 - left) * scale)), int(np.ceil((y2 - top) * scale))
    inside = mask[by1:by2, bx1:bx2]
    inside[:] = np.where(crop_prob[by1:by2, bx1:bx2] > threshold, cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    if not (inside == cv2.GC_PR_FGD).any():  # the map found nothing in the box: let GrabCut decide it all
        inside[:] = cv2.GC_PR_FGD
    if not (mask == cv2.GC_BGD).any():
        return fallback
    cv2.setRNGSeed(0)  # GrabCut's k-means initialisation: the same mask for the same input
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    refined = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    if not refined.any():
        return fallback
    out = np.zeros((height, width), bool)
    out[top:bottom, left:right] = cv2.resize(refined, (right - left, bottom - top),
                                             interpolation=cv2.INTER_NEAREST).astype(bool)
    return out


def refine_mask(method, rgb, box, prob, threshold=MASK_THRESHOLD):
    """The refined binary mask of `method` (REFINEMENTS, not "none")."""
    if method == "grabcut":
        return grabcut(rgb, box, prob, threshold)
    raise ValueError(f"unknown mask refinement {method!r}; choose from {', '.join(REFINEMENTS)}")
