"""engine.evaluate's results on a dataset with phrases of no target or several, read as evaluation.generalized_metrics
needs them; and the mask scorer that GRES needs during a training run's validation."""
from datasets import is_generalized
from evaluation.generalized_metrics import summarize_generalized
from evaluation.mask_metrics import MaskScorer
from evaluation.predictions import image_box
from evaluation.presence import presence_scores
from evaluation.segmentation_map import MASK_THRESHOLD


def generalized_scorer(dataset, args):
    """For validating on a dataset with no-target or several-target phrases and masks: the mask scorer GRES needs
    (None otherwise: the box metrics alone)."""
    return MaskScorer(dataset, args, MASK_THRESHOLD) if is_generalized(dataset) and dataset.has_masks() else None


def generalized_expressions(results, dataset, args=None, presence_from=None):
    """What evaluation.generalized_metrics needs of each result: targets, presence (the score of presence_from, None
    for none, and every source's in "scores"), mask terms and the boxes answered (the mask's components where they
    were read, else the regressed box, in image pixels with args, score 1)."""
    expressions, placements = [], {}  # placements: one per image size, shared by the expressions
    for index in sorted(results):
        iou, box, _, terms, extra = results[index]
        info = dataset.sample_info(index)
        gt_boxes = info.get("boxes", [info["box"]])
        boxes = extra["boxes"]
        if boxes is None:
            boxes = [image_box(dataset, index, box, args, placements) + [1.0]] if args is not None else []
        scores = presence_scores(extra["present"], extra["mask_present"])
        expressions.append({"n_targets": len(gt_boxes), "gt_boxes": gt_boxes, "present": scores.get(presence_from),
                            "scores": scores, "terms": terms["mask"] if terms is not None else None, "boxes": boxes})
    return expressions


def summarize_generalized_results(results, dataset, options=None):
    """GRES / GREC of engine.evaluate's results; options: {"args" (the model's configuration: the regressed boxes in
    image pixels), "presence_from" (default: the head where the model has one), "presence_threshold",
    "grec_score_threshold", "grec_match"}, the defaults where absent."""
    options = dict(options or {})
    args = options.pop("args", None)
    source = options.pop("presence_from", None)
    if source is None and any(extra["present"] is not None for *_, extra in results.values()):
        source = "head"
    return summarize_generalized(generalized_expressions(results, dataset, args, source), presence_from=source,
                                 **options)
