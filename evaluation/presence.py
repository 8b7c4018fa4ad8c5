"""Whether a phrase's object is in the image ("not found" otherwise), for any checkpoint (docs/generalized.md,
"Presence"): the presence head's probability (a checkpoint trained with --presence_head), a score read off the
segmentation map (any checkpoint, the authors' included), or their product; the threshold that turns a score into
the answer, given or chosen on a validation split; and the flags of the scripts that answer."""
import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

from .mask_boxes import MIN_COMPONENT_AREA

SOURCES = ("head", "mask", "both")
# The mask's score: the sigmoid of the mean logit over the map's highest share of the canvas, averaged over the maps
# the model has (the grid head's, and the fine head's refinement of it where there is one); docs/generalized.md,
# "Presence from the mask", gives the candidates' AUROC this was chosen by. Stored beside a threshold chosen for it.
MASK_PRESENCE_TOP = 0.01
MASK_STATISTIC = ("sigmoid of the mean, over the model's maps (grid, and fine where there is one), of the mean of the "
                  "top share of canvas logits")
GRID_MAP = "grid_seg_logits"  # the model's output holding the grid head's map beside a fine head's


def segmentation_maps(out):
    """The maps of a model's output that mask presence reads: seg_logits, and the grid head's map where seg_logits
    comes from a fine head."""
    return [out["seg_logits"]] + ([out[GRID_MAP]] if GRID_MAP in out else [])


def mask_presence(maps, size, top=MASK_PRESENCE_TOP):
    """[B, h, w] logits of a segmentation map, or a list of maps of the same phrases -> [B] float64 scores: each map
    upsampled to the size x size canvas (bilinearly, as evaluation.segmentation_map does), the mean of its highest
    max(1, top x size^2) logits, averaged over the maps, through a sigmoid in float64: high where the maps hold an
    object of that size or more, low where they are empty everywhere. Logits, not probabilities: a confident map's
    probabilities round to 1 in float32 and no longer rank. Two maps (grid and fine) rank better than either alone:
    their errors differ."""
    means = []
    for seg_logits in [maps] if torch.is_tensor(maps) else maps:
        logits = F.interpolate(seg_logits.float()[:, None], size=(size, size), mode="bilinear", align_corners=False)
        flat = logits.flatten(1)
        k = max(1, min(flat.shape[1], round(top * flat.shape[1])))
        means.append(flat.topk(k, dim=1).values.double().mean(1))
    return torch.stack(means).mean(0).sigmoid()


def presence_scores(head, mask):
    """{source: score} of one phrase from the head's probability (None without a head) and the mask's score (None
    where it was not computed)."""
    scores = {"mask": mask}
    if head is not None:
        scores.update(head=head, both=None if mask is None else head * mask)
    return scores


def score_and_threshold(score, threshold):
    """Both as text, with the digits it takes to tell them apart: a mask's scores crowd just below 1
    (0.9999975 against 0.9999976), where six significant digits would print the same number twice."""
    for digits in range(3, 13):
        texts = f"{score:.{digits}g}", f"{threshold:.{digits}g}"
        if texts[0] != texts[1]:
            return texts
    return texts


def choose_threshold(scores, labels):
    """The threshold maximising N-acc + T-acc when a phrase is found where its score is at least the threshold:
    (threshold, N-acc, T-acc). labels: True where the phrase has a target. The threshold lies halfway between two
    neighbouring scores (a tie among candidates goes to the lowest)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if not positives or not negatives:
        raise ValueError("choosing a presence threshold needs phrases with a target and phrases without one")
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    ordered = np.sort(scores[labels]), np.sort(scores[~labels])
    t_acc = 1 - np.searchsorted(ordered[0], candidates, side="left") / positives   # targeted found: score >= t
    n_acc = np.searchsorted(ordered[1], candidates, side="left") / negatives       # no target kept out: score < t
    best = int(np.argmax(n_acc + t_acc))
    return float(candidates[best]), float(n_acc[best]), float(t_acc[best])


def parse_threshold(text):
    """--presence_threshold: a number (above 1: nothing is ever found), or "auto" (the checkpoint's, or one chosen on
    a validation split)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number (a presence probability), or auto")
    return value


def add_answer_flags(parser):
    """What eval.py, predict.py and app.py answer besides the box: "not found" (--presence_from,
    --presence_threshold, --mask_presence_top) and one box per object (--boxes_from_mask, --min_component_area)."""
    parser.add_argument("--presence_from", choices=SOURCES,
                        help="where \"not found\" comes from: head = a --presence_head checkpoint's head, mask = the "
                             "segmentation map (any checkpoint, the official ones too), both = their product "
                             "[default: head where the checkpoint has one, else none: every phrase is found]")
    parser.add_argument("--presence_threshold", type=parse_threshold, default=0.5,
                        help="phrases whose presence score is below this are answered \"not found\" (records keep "
                             "\"present\", \"found\" and \"presence_from\"); auto = the one chosen on the validation "
                             "split during training (stored in the checkpoint), else eval.py chooses it on the "
                             "dataset's val split")
    parser.add_argument("--mask_presence_top", type=float, default=MASK_PRESENCE_TOP,
                        help="--presence_from mask/both: the mask's score is the sigmoid of the mean of its highest "
                             "logits over this share of the canvas")
    parser.add_argument("--boxes_from_mask", action="store_true",
                        help="also answer with one box per connected component of the thresholded mask, for phrases "
                             "naming several objects (touching objects merge into one box)")
    parser.add_argument("--min_component_area", type=float, default=MIN_COMPONENT_AREA,
                        help="--boxes_from_mask: smallest component kept, as a fraction of the image's area")


def has_presence_head(model):
    """Whether a PyTorch model has a presence head, or an ONNX export (inference.onnx_runtime) its output."""
    return (getattr(model, "presence_head", None) is not None
            or "presence_logits" in getattr(model, "output_names", ()))


def presence_source(requested, model):
    """The source used for model (a PyTorch model or an ONNX export): the one asked for, else head where there is
    one. ValueError where model cannot give it: head and both need a presence head; mask and both need every map the
    statistic reads, which an export of a fine head made before it read the grid head's map too lacks."""
    has_head = has_presence_head(model)
    if requested in ("head", "both") and not has_head:
        raise ValueError(f"--presence_from {requested}: the checkpoint has no presence head (train with "
                         f"--presence_head), use --presence_from mask")
    if requested in ("mask", "both") and getattr(model, "lacks_grid_map", False):
        raise ValueError(f"{model.path} holds the fine head's map alone, and the mask's presence score reads the grid "
                         f"head's map too: export the checkpoint again with tools/export_onnx.py")
    return requested or ("head" if has_head else None)


def mask_statistic(top=MASK_PRESENCE_TOP):
    """How a threshold's mask score was computed, stored beside it: another statistic needs another threshold."""
    return f"{MASK_STATISTIC}, top {top}"


def usable(thresholds, source, top):
    """Whether the stored thresholds hold one for source, for a mask score one of the same statistic and share."""
    chosen = (thresholds or {}).get(source)
    return chosen is not None and (source == "head" or chosen.get("mask_statistic") == mask_statistic(top))


def stored_threshold(thresholds, source, where, top=MASK_PRESENCE_TOP):
    """The threshold chosen on validation for source (and a mask score's top share), as a checkpoint (or export)
    stores them; ValueError naming where it should have been and what to do."""
    if not usable(thresholds, source, top):
        flag = f"--presence_from {source}{'' if source == 'head' else f' at --mask_presence_top {top}'}"
        held = (thresholds or {}).get(source)
        if held:
            what = (f"holds a presence threshold for {flag} chosen for another mask statistic "
                    f"({held.get('mask_statistic', 'an earlier one')})")
        else:
            what = f"holds no presence threshold for {flag} (training on data with no-target phrases stores them)"
        raise ValueError(f"--presence_threshold auto: {where} {what}; give a number, or choose one on a validation "
                         f"split with eval.py --presence_threshold auto")
    return float(thresholds[source]["threshold"])
