"""Overlays of a grounding prediction: image, predicted box, translucent mask, phrase and confidence."""
import math
import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PRED_COLOUR = (0, 220, 0)
GT_COLOUR = (255, 200, 0)
MASK_COLOUR = np.array([255, 40, 40], np.float32)


def draw_overlay(image, pred_box, mask=None, phrase="", confidence=None, gt_box=None, iou=None, min_width=320):
    """image: uint8 [H, W, 3] RGB; boxes xyxy in its pixels; mask: [H, W] probabilities in [0, 1].
    Returns a PIL image: the mask blended in red (opacity = probability x 0.5), the prediction in green,
    the ground truth in amber, and a caption band with the phrase and the scores. Images narrower than
    min_width are enlarged by a whole factor (nearest neighbour) so that small ones stay readable."""
    zoom = max(1, math.ceil(min_width / image.shape[1]))
    if zoom > 1:
        image = image.repeat(zoom, axis=0).repeat(zoom, axis=1)
        mask = None if mask is None else np.asarray(mask).repeat(zoom, axis=0).repeat(zoom, axis=1)
        pred_box = [zoom * float(v) for v in pred_box]
        gt_box = None if gt_box is None else [zoom * float(v) for v in gt_box]
    h, w = image.shape[:2]
    canvas = image.astype(np.float32)
    if mask is not None:
        alpha = 0.5 * np.clip(mask, 0, 1)[..., None]
        canvas = canvas * (1 - alpha) + MASK_COLOUR * alpha
    img = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    thickness = max(2, round(max(h, w) / 200))
    if gt_box is not None:
        draw.rectangle([float(v) for v in gt_box], outline=GT_COLOUR, width=thickness)
    draw.rectangle([float(v) for v in pred_box], outline=PRED_COLOUR, width=thickness)

    font = ImageFont.load_default(size=max(12, round(max(h, w) / 40)))
    scores = [f"conf {confidence:.2f}" if confidence is not None else "", f"IoU {iou:.2f}" if iou is not None else ""]
    caption = " | ".join(s for s in [f'"{phrase}"', *scores] if s)
    line_height = font.size + 4
    lines = textwrap.wrap(caption, width=max(20, int(w / (0.55 * font.size)))) or [""]
    band = Image.new("RGB", (w, line_height * len(lines) + 6), (0, 0, 0))
    band_draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        band_draw.text((4, 3 + i * line_height), line, fill=(255, 255, 255), font=font)
    out = Image.new("RGB", (w, h + band.height))
    out.paste(img, (0, 0))
    out.paste(band, (0, h))
    return out


# One colour per phrase (Okabe-Ito, distinguishable with the common colour-vision deficiencies).
PHRASE_COLOURS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
                  (204, 121, 167), (255, 255, 255)]


def draw_groundings(image, boxes, masks, labels, min_width=480, colour_ids=None):
    """Several phrases on one image, each in its own colour: image uint8 [H, W, 3] RGB; boxes xyxy in its pixels;
    masks: bool [H, W] per box (None for a box whose mask is drawn with another), or None to leave them out; labels:
    the text above each box; colour_ids: the colour of each box (default: one per box; a phrase answered with several
    boxes gives them its own). Small images are enlarged by a whole factor (nearest neighbour), as in draw_overlay.
    Returns a PIL image."""
    zoom = max(1, math.ceil(min_width / image.shape[1]))
    canvas = image.repeat(zoom, axis=0).repeat(zoom, axis=1).astype(np.float32)
    colour_ids = range(len(boxes)) if colour_ids is None else colour_ids
    colours = [PHRASE_COLOURS[k % len(PHRASE_COLOURS)] for k in colour_ids]
    for mask, colour in zip(masks or [], colours):
        if mask is None:
            continue
        region = np.asarray(mask, bool).repeat(zoom, axis=0).repeat(zoom, axis=1)
        canvas[region] = 0.55 * canvas[region] + 0.45 * np.float32(colour)
    img = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    h, w = canvas.shape[:2]
    thickness = max(2, round(max(h, w) / 250))
    font = ImageFont.load_default(size=max(12, round(max(h, w) / 45)))
    for box, label, colour in zip(boxes, labels, colours):
        x1, y1, x2, y2 = (zoom * float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=thickness)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left + 6, bottom - top + 6
        ty = y1 - th if y1 - th >= 0 else min(y1 + thickness, h - th)  # above the box unless at the top edge
        tx = min(max(0, x1), max(0, w - tw))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        draw.text((tx + 3 - left, ty + 3 - top), label, fill=(0, 0, 0), font=font)
    return img


@torch.inference_mode()
def write_dataset_overlays(model, dataset, records, folder, args, device):
    """Overlays of evaluation records (evaluation.predictions: index, box, gt_box, iou, score), masks included, named
    <position>_<dataset index>_iou<IoU>.png; returns the paths."""
    from datasets import collate_fn
    from datasets.transforms import canvas_map_to_image, eval_placement
    from evaluation.segmentation_map import canvas_probabilities

    batch = collate_fn([dataset[r["index"]] for r in records])
    model.eval()
    inputs = [batch[k].to(device) for k in ("img", "img_mask", "text_ids", "text_mask")]
    prob = canvas_probabilities(model(*inputs, aux=False)["seg_logits"].cpu(), args.imsize)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, record in enumerate(records):
        image = dataset.load_image(record["index"])
        size = (image.shape[1], image.shape[0])
        mask = canvas_map_to_image(prob[k], eval_placement(*size, args), size).numpy()
        path = folder / f"{k:02d}_{record['index']}_iou{record['iou']:.2f}.png"
        draw_overlay(image, record["box"], mask, record["phrase"], record["score"], record["gt_box"],
                     record["iou"]).save(path)
        paths.append(path)
    return paths
