"""One request of the browser demo (app.py), without the web page: an uploaded image and phrases in; the drawing,
table rows, downloadable files and notes out. Every mistake of the user is a RequestError whose message the page
shows as it is."""
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from datasets.images import MAX_PIXELS, read_photo
from datasets.records import write_jsonl
from evaluation.mask_boxes import boxes_from_mask
from evaluation.mask_metrics import save_png
from evaluation.mask_refine import refine_mask
from evaluation.overlays import draw_groundings
from evaluation.predictions import prediction_record
from evaluation.presence import score_and_threshold

MAX_SIDE = 4096  # larger uploads are downscaled first: the model sees at most imsize pixels a side anyway
MAX_PHRASES = 8
TABLE_HEADERS = ["phrase", "x1", "y1", "x2", "y2", "score"]
PLAIN_MODES = {"RGB", "L", "1"}


class RequestError(ValueError):
    """A request the app cannot answer; the message says why and what to do."""


def read_upload(path, exif="apply", max_pixels=MAX_PIXELS):
    """The uploaded file -> (uint8 [H, W, 3] RGB, orientation note (datasets.images), notes). Its size is checked
    from its header before any decoding (max_pixels), a large JPEG decoded at a reduced scale; the message of an
    unreadable file says why (too large, truncated, corrupt, not an image, HEIC without pillow-heif) and names the
    upload, never the server's folder."""
    if path is None:
        raise RequestError("No image: upload one, paste one or take a photo, then press Ground.")
    name = Path(path).name
    try:
        rgb, orientation, (w, h) = read_photo(path, exif, max_pixels, canvas=MAX_SIDE // 2)
        with Image.open(path) as pil:
            mode = pil.mode
    except (ValueError, OSError) as err:
        if "pillow-heif" in str(err):
            raise RequestError(f"{name} is a HEIC photo: the server needs the pillow-heif package to read it "
                               f"(pip install pillow-heif), or upload a JPEG.") from None
        cause = str(err).replace(f"cannot read image {path}: ", "").replace(f"{path} is ", "")
        raise RequestError(f"{name} cannot be used: {cause}.".replace("..", ".")) from None
    notes = [] if mode in PLAIN_MODES else [f"{name}: {mode} image converted to 8-bit RGB."]
    if orientation:
        done = "turned as viewers show it" if orientation["exif"] == "apply" else "kept as stored (--exif ignore)"
        notes.append(f"{name}: EXIF orientation {orientation['exif_orientation']}: the photo was {done}; boxes and "
                     f"masks refer to that.")
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        notes.append(f"{name}: {w} x {h} pixels downscaled to {size[0]} x {size[1]}; boxes and masks refer to the "
                     f"downscaled image.")
    return rgb, orientation, notes


def read_phrases(text):
    """One phrase per line, blank lines skipped."""
    phrases = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not phrases:
        raise RequestError("No phrase: type the expression that refers to the object, one per line.")
    if len(phrases) > MAX_PHRASES:
        raise RequestError(f"{len(phrases)} phrases: give at most {MAX_PHRASES} per request.")
    return phrases


def predict_with_notes(predictor, rgb, phrases):
    """The predictor's results, and its warnings (a phrase cut to the model's text length) as notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = predictor.predict([rgb] * len(phrases), phrases)
    notes = [str(w.message).replace("truncated", "cut") for w in caught]
    return results, notes


def ground(predictor, image_path, text, mask_threshold, show_masks, out_dir, mask_refine="none"):
    """Answers one request; files (the mask PNGs, predictions.jsonl) go to out_dir, a new folder per request.
    mask_refine: "grabcut" draws and saves the refined mask (evaluation.mask_refine) instead of the model's.
    A phrase the presence head answers "not found" is drawn nowhere and said in the notes; a phrase answered with the
    mask's boxes (boxes_from_mask) gets each of them, in its colour.
    Returns {"image": PIL drawing, "rows": table rows, "files": paths, "notes": lines, "records": records,
    "seconds": the model's time}."""
    if not 0 <= mask_threshold <= 1:
        raise RequestError(f"mask threshold {mask_threshold} is outside [0, 1].")
    rgb, orientation, notes = read_upload(image_path, predictor.exif, predictor.max_image_pixels)
    phrases = read_phrases(text)
    start = time.perf_counter()
    results, predict_notes = predict_with_notes(predictor, rgb, phrases)
    for result in results:
        if mask_refine != "none":
            result["mask"] = refine_mask(mask_refine, rgb, result["box"], result["mask"], mask_threshold)
        if "boxes" in result and (mask_refine != "none" or mask_threshold != predictor.mask_threshold):
            # read off the mask as the page cuts it (the predictor's are at its own threshold, before refinement)
            result["boxes"] = boxes_from_mask(result["mask"], mask_threshold, predictor.component_area)
    seconds = time.perf_counter() - start

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_name = Path(image_path).name
    shown = {"boxes": [], "masks": [], "labels": [], "colours": []}
    rows, records, files = [], [], []
    for k, result in enumerate(results, 1):
        mask = result["mask"] > mask_threshold
        mask_file = out_dir / f"mask_{k}.png"
        save_png(mask.astype(np.uint8) * 255, mask_file)
        files.append(mask_file)
        answer = {key: result[key] for key in ("present", "found", "presence_from", "boxes") if key in result}
        record = prediction_record(image_name, result["phrase"], result["box"], result["score"],
                                   image_size=result["image_size"], mask=mask_file.name, **answer, **orientation)
        records.append(record)
        if not result.get("found", True):
            score, threshold = score_and_threshold(result["present"], predictor.presence_threshold)
            notes.append(f"{k}. \"{result['phrase']}\": not found (presence from the {result['presence_from']} "
                         f"{score}, below {threshold}); nothing drawn.")
            continue
        boxes = [(box[:4], box[4]) for box in result.get("boxes") or []] or [(record["box"], record["score"])]
        for j, (box, score) in enumerate(boxes):
            shown["boxes"].append(box)
            shown["masks"].append(mask if j == 0 else None)
            shown["labels"].append(f"{k}. {result['phrase']}")
            shown["colours"].append(k - 1)
            rows.append([record["phrase"], *box, round(score, 4)])
    drawing = draw_groundings(rgb, shown["boxes"], shown["masks"] if show_masks else None, shown["labels"],
                              colour_ids=shown["colours"])
    write_jsonl(out_dir / "predictions.jsonl", records)
    files.insert(0, out_dir / "predictions.jsonl")
    return {"image": drawing, "rows": rows, "files": [str(f) for f in files], "notes": notes + predict_notes,
            "records": records, "seconds": seconds}
