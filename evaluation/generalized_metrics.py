"""Generalized grounding metrics (gRefCOCO: phrases with no target or several; docs/generalized.md).

GRES scores masks as ReLA's evaluation does; GREC scores boxes as the gRefCOCO release's MDETR evaluation does. Both
take a "found" decision per expression (the presence head's probability against --presence_threshold; always found
without the head). The presence score's AUROC and a sweep of the threshold let a user pick it on val.
"""
from collections import defaultdict

import torch
from scipy.stats import mannwhitneyu
from torchvision.ops import box_iou, generalized_box_iou

from datasets.records import KINDS, target_kind

from .presence import choose_threshold

GRES_PRECISIONS = (0.7, 0.8, 0.9)
PRESENCE_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def ratio(a, b):
    return a / b if b else float("nan")


def gres(expressions):
    """expressions: [(n_targets, found, intersection, union)], the model's thresholded mask (whether found or not)
    against the union of the targets' masks (empty for no target). -> {"giou", "ciou", "n_acc", "t_acc",
    "pr@0.7", "pr@0.8", "pr@0.9", "count"}.

    A no-target phrase not found is right: IoU 1, nothing added to the sums; found, it scores IoU 0 and its
    predicted area joins the cumulative union. A targeted phrase not found scores intersection 0 over its union."""
    tp = fn = fp = tn = 0
    iou_sum = cum_inter = cum_union = 0.0
    targeted = []
    for n_targets, found, inter, union in expressions:
        if n_targets == 0:
            if found:
                fn += 1
                cum_union += union
            else:
                tp += 1
                iou_sum += 1.0
            continue
        if found:
            tn += 1
        else:
            fp += 1
            inter = 0
        iou = inter / union if union else 0.0
        iou_sum += iou
        cum_inter += inter
        cum_union += union
        targeted.append(iou)
    stats = {"giou": ratio(iou_sum, len(expressions)), "ciou": ratio(cum_inter, cum_union),
             "n_acc": ratio(tp, tp + fn), "t_acc": ratio(tn, tn + fp)}
    stats.update({f"pr@{t}": ratio(sum(iou >= t for iou in targeted), len(targeted)) for t in GRES_PRECISIONS})
    stats["count"] = len(expressions)
    return stats


def presence_accuracy(decisions):
    """[(n_targets, found)] -> {"n_acc": no-target phrases not found / all no-target, "t_acc": targeted phrases found
    / all targeted} (GRES's N-acc and T-acc)."""
    none = [found for n, found in decisions if n == 0]
    some = [found for n, found in decisions if n > 0]
    return {"n_acc": ratio(sum(not f for f in none), len(none)), "t_acc": ratio(sum(some), len(some))}


def matched_pairs(pred_boxes, gt_boxes, match="giou", threshold=0.5):
    """One-to-one matches, greedily by the highest overlap first, while it is >= threshold. Boxes x1, y1, x2, y2;
    match: "giou" (what the official code computes) or "iou"."""
    if not pred_boxes or not gt_boxes:
        return 0
    pred, gt = torch.tensor(pred_boxes, dtype=torch.float64), torch.tensor(gt_boxes, dtype=torch.float64)
    overlap = (generalized_box_iou if match == "giou" else box_iou)(pred, gt)
    pairs = 0
    while True:
        best = overlap.max()
        if best < threshold:
            return pairs
        i, j = divmod(int(overlap.argmax()), overlap.shape[1])
        overlap[i, :] = float("-inf")
        overlap[:, j] = float("-inf")
        pairs += 1


def grec_f1(pred_boxes, gt_boxes, match="giou", threshold=0.5):
    """F1 of an expression's kept boxes against its targets; a no-target phrase scores 1 when no box is kept."""
    if not gt_boxes:
        return 0.0 if pred_boxes else 1.0
    tp = matched_pairs(pred_boxes, gt_boxes, match, threshold)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(pred_boxes), tp / len(gt_boxes)
    return 2 * precision * recall / (precision + recall)


def grec(expressions, match="giou", threshold=0.5):
    """expressions: [(gt boxes, kept boxes)] -> {"pr_f1", "n_acc", "t_acc", "count"}: Pr@(F1=1, IoU>=0.5), the share
    of expressions answered exactly; N-acc: no-target phrases with no box kept; T-acc: targeted ones with some box."""
    tp = fn = fp = tn = 0
    exact = 0
    for gt_boxes, kept in expressions:
        exact += abs(grec_f1(kept, gt_boxes, match, threshold) - 1.0) < 1e-9
        if not gt_boxes:
            tp += not kept
            fn += bool(kept)
        else:
            tn += bool(kept)
            fp += not kept
    return {"pr_f1": ratio(exact, len(expressions)), "n_acc": ratio(tp, tp + fn), "t_acc": ratio(tn, tn + fp),
            "count": len(expressions)}


def auroc(scores, labels):
    """Area under the ROC curve of `scores` separating labels True from False (ties count a half: the Mann-Whitney
    statistic over the pairs); nan without both kinds."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    if not positives or not negatives:
        return float("nan")
    return float(mannwhitneyu(positives, negatives).statistic) / (len(positives) * len(negatives))


def kept_boxes(expression, found, score_threshold):
    """The boxes an expression answers with: none when not found, else those scoring >= score_threshold."""
    if not found:
        return []
    return [box[:4] for box in expression["boxes"] if box[4] >= score_threshold]


def summarize_generalized(expressions, presence_threshold=0.5, grec_score_threshold=0.7, grec_match="giou",
                          sweep=PRESENCE_SWEEP, presence_from=None):
    """expressions: [{"n_targets", "gt_boxes", "present" (the score of presence_from, or None: found), "scores"
    ({source: score} of every presence source, optional), "terms" ((intersection, union) or None), "boxes"
    ([[x1, y1, x2, y2, score]])}] -> GRES totals at the top level, GREC ones prefixed "grec_", "phrases" (how many),
    "by_kind" (no / one / several targets), "presence_auroc" and "presence_sweep" of presence_from, and per source
    its AUROC and the threshold that maximises N-acc + T-acc ("presence_by_source"; where there are phrases with a
    target and without)."""
    def found(e, threshold):
        return e["present"] is None or e["present"] >= threshold

    def totals(chosen, threshold):
        # N-acc and T-acc depend on the decisions alone: GRES's where there are no masks to score.
        stats = presence_accuracy([(e["n_targets"], found(e, threshold)) for e in chosen])
        if chosen and all(e["terms"] is not None for e in chosen):
            stats.update(gres([(e["n_targets"], found(e, threshold), *e["terms"]) for e in chosen]))
        box_stats = grec([(e["gt_boxes"], kept_boxes(e, found(e, threshold), grec_score_threshold)) for e in chosen],
                         grec_match)
        stats.update({f"grec_{k}": v for k, v in box_stats.items()})
        scored = [e["terms"] for e in chosen if e["terms"] is not None and e["n_targets"] > 0]
        if scored:  # the mask against its targets whatever the presence decision: how well it outlines them
            stats["mask_miou"] = sum(i / u if u else 0.0 for i, u in scored) / len(scored)
        stats["count"] = len(chosen)
        return stats

    stats = totals(expressions, presence_threshold)
    stats["phrases"] = stats.pop("count")  # the report's "count" is the one-target phrases' (engine.summarize_results)
    groups = defaultdict(list)
    for e in expressions:
        groups[target_kind(e["n_targets"])].append(e)
    stats["by_kind"] = {kind: totals(groups[kind], presence_threshold) for kind in KINDS if groups[kind]}
    stats.update(presence_threshold=presence_threshold, grec_score_threshold=grec_score_threshold,
                 grec_match=grec_match, presence_from=presence_from)
    labels = [e["n_targets"] > 0 for e in expressions]
    if any(labels) and not all(labels) and any("scores" in e for e in expressions):
        stats["presence_by_source"] = {}
        for source in expressions[0]["scores"]:
            scores = [e["scores"][source] for e in expressions]
            threshold, n_acc, t_acc = choose_threshold(scores, labels)
            stats["presence_by_source"][source] = {"auroc": auroc(scores, labels), "threshold": threshold,
                                                   "n_acc": n_acc, "t_acc": t_acc}
    if any(e["present"] is not None for e in expressions):
        stats["presence_auroc"] = auroc([e["present"] for e in expressions], [e["n_targets"] > 0 for e in expressions])
        stats["presence_sweep"] = [{"threshold": t, **{k: v for k, v in totals(expressions, t).items()
                                                       if k in ("giou", "ciou", "n_acc", "t_acc", "grec_pr_f1")}}
                                   for t in sweep]
    return stats


def format_generalized(stats):
    """Lines for a report: GRES and GREC totals, one row per kind, the presence AUROC and sweep."""
    def row(name, s):
        gres_part = (f"gIoU {s['giou']:.4f} | cIoU {s['ciou']:.4f} | " if "giou" in s else "")
        mask_part = f"mask mIoU {s['mask_miou']:.4f} | " if "mask_miou" in s else ""
        return (f"  {name:<9} {gres_part}N-acc {s['n_acc']:.4f} | T-acc {s['t_acc']:.4f} | "
                f"GREC Pr@(F1=1) {s['grec_pr_f1']:.4f} N-acc {s['grec_n_acc']:.4f} T-acc {s['grec_t_acc']:.4f} | "
                f"{mask_part}{s.get('phrases', s.get('count'))} phrases")

    lines = [f"generalized (presence threshold {stats['presence_threshold']}, GREC boxes scored >= "
             f"{stats['grec_score_threshold']}, matched on {stats['grec_match']}):", row("all", stats)]
    lines += [row(kind, s) for kind, s in stats["by_kind"].items()]
    if "pr@0.7" in stats:
        lines.append("  GRES Pr@0.7 0.8 0.9 (targeted phrases): "
                     + " ".join(f"{stats[f'pr@{t}']:.3f}" for t in GRES_PRECISIONS))
    if "presence_auroc" in stats:
        lines.append(f"  presence ({stats['presence_from']}) AUROC {stats['presence_auroc']:.4f}; threshold sweep "
                     f"(N-acc / T-acc / gIoU):")
        lines.append("    " + "  ".join(f"{p['threshold']}: {p['n_acc']:.3f}/{p['t_acc']:.3f}/"
                                       f"{p.get('giou', float('nan')):.3f}" for p in stats["presence_sweep"]))
    for source, chosen in stats.get("presence_by_source", {}).items():
        lines.append(f"  presence from {source}: AUROC {chosen['auroc']:.4f}; best threshold here "
                     f"{chosen['threshold']:.7g} (N-acc {chosen['n_acc']:.3f}, T-acc {chosen['t_acc']:.3f})")
    return lines
