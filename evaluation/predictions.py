"""The prediction record, the one format every script writes predictions in (docs/evaluation.md, "Prediction
records"): image, phrase, box (x1, y1, x2, y2 in image pixels), score, and gt_box / iou when the ground truth is
known; JSON lines, one record per (image, phrase)."""
import json
from pathlib import Path

import torch
from torchvision.ops import box_convert

from datasets.transforms import canvas_to_image, eval_placement

from .presence import presence_scores


def prediction_record(image, phrase, box, score, gt_box=None, iou=None, **extra):
    record = {"image": str(image), "phrase": phrase, "box": [round(float(v), 2) for v in box],
              "score": round(float(score), 4)}
    if gt_box is not None:
        record["gt_box"] = [round(float(v), 2) for v in gt_box]
    if iou is not None:
        record["iou"] = round(float(iou), 4)
    record.update(extra)
    return record


def read_pairs(path):
    """A JSONL file of {"image": path, "phrase": text} lines ("text" is accepted for "phrase") -> [(image, phrase)].
    A relative image path is taken relative to the file's folder when it is not found from the working folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            phrase = item["phrase"] if "phrase" in item else item["text"]
            image = item["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: expected {{\"image\": ..., \"phrase\": ...}} ({type(err).__name__}: "
                             f"{err}); fix or remove the line") from None
        if not Path(image).exists() and (path.parent / image).exists():
            image = str(path.parent / image)
        pairs.append((image, phrase))
    return pairs


def image_box(dataset, index, box, args, placements=None):
    """A canvas box cx, cy, w, h (normalised) of sample index -> [x1, y1, x2, y2] in its image's pixels."""
    size = dataset.image_size(index)
    placements = {} if placements is None else placements
    if size not in placements:
        placements[size] = eval_placement(*size, args)
    canvas_box = box_convert(torch.tensor([box]), "cxcywh", "xyxy").clamp(0, 1) * args.imsize
    return canvas_to_image(canvas_box, placements[size], size)[0].tolist()


def evaluation_records(results, dataset, args, presence_threshold=0.5, presence_from=None):
    """engine.evaluate's {index: (IoU, canvas box cx,cy,w,h, score, ...)} -> prediction records in the images' pixels,
    ordered by dataset index, with the ground truth, the index and the expression type where known; with a presence
    source (evaluation.presence: head, mask or both) "present" (its score), "found" (present >= presence_threshold)
    and "presence_from", with --boxes_from_mask "boxes"."""
    placements = {}
    records = []
    for index in sorted(results):
        iou, box, score = results[index][:3]
        info = dataset.sample_info(index)
        pred = image_box(dataset, index, box, args, placements)
        extra = {"index": index}
        if "expr_type" in info:
            extra["type"] = info["expr_type"]
        generalized = results[index][4] if len(results[index]) > 4 else {}
        if presence_from is not None:
            present = presence_scores(generalized["present"], generalized["mask_present"])[presence_from]
            extra.update(present=float(present), found=present >= presence_threshold, presence_from=presence_from)
        if generalized.get("boxes") is not None:
            extra["boxes"] = generalized["boxes"]
        if "boxes" in info:
            extra["gt_boxes"] = info["boxes"]
            iou = iou if len(info["boxes"]) == 1 else None
        records.append(prediction_record(info["image"], info["phrase"], pred, score, info["box"], iou, **extra))
    return records


def worst_and_best(records, count):
    """The count // 2 records of lowest IoU and the rest of highest (all when there are fewer); records without an
    IoU (no target, several) are left out."""
    ranked = sorted((r for r in records if "iou" in r), key=lambda r: r["iou"])
    if count >= len(ranked):
        return ranked
    return ranked[:count // 2] + ranked[len(ranked) - (count - count // 2):]
