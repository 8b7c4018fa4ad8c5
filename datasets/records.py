"""The JSON-lines annotation format for any dataset (docs/custom_data.md).

<split_root>/NAME/NAME_<split>.jsonl holds one JSON object per line:
    {"image": "relative/path.jpg", "phrase": "the mug left of the laptop", "box": [x1, y1, x2, y2]}
with optional "id", "type" (metrics are also reported per type), "coco_id" (the COCO image id of the same photo, which
keeps it out of training when a COCO-based evaluation split holds it) and "mask" (COCO polygons [[x, y, ...], ...] or
an RLE {"size": [h, w], "counts": ...}). A phrase with zero, one or several targets gives "boxes": [[x1, y1, x2, y2],
...] in place of "box" ([] for none), with an optional "masks" list aligned with it. Image paths are relative to
--data_root. Every problem is reported as `file:line: what is wrong (what to do)`.
"""
import json
import math
from pathlib import Path

from pycocotools import mask as coco_mask

from utils.files import atomic_write

REQUIRED = ("image", "phrase")
# A phrase's kind by its number of targets (zero, one, several), as the generalized metrics group phrases.
KINDS = ("none", "one", "several")


class RecordError(ValueError):
    """A record that cannot be used; the message is one line, `file:line: what is wrong (what to do)`."""


def index_path(split_root, dataset, split):
    return Path(split_root) / dataset / f"{dataset}_{split}.jsonl"


def split_files(split_root, dataset):
    """{split: path} of every NAME_<split>.jsonl in the dataset's folder."""
    folder = Path(split_root) / dataset
    prefix = f"{dataset}_"
    return {p.stem[len(prefix):]: p for p in sorted(folder.glob(f"{prefix}*.jsonl"))}


def iter_records(path, problems=None):
    """(where, record) of each line of a JSONL file, read as it goes, where = "file:line". A malformed line raises
    RecordError, or with a problems list is appended to it and skipped."""
    path = Path(path)
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                reason = (f"malformed JSON ({err.msg} at column {err.colno})" if isinstance(err, json.JSONDecodeError)
                          else "not UTF-8 text")
                error = RecordError(f"{where}: {reason}; fix or remove the line")
                if problems is None:
                    raise error from None
                problems.append(str(error))


def check_record(record):
    """-> (image, [x1, y1, x2, y2] floats, phrase, extra) of a valid record; ValueError with what is wrong and what to
    do otherwise. extra holds "type", "id" and "coco_id" where given, then "mask" for a "box" record, or "boxes" (and
    "masks") for a "boxes" record, whose box is the union of its boxes (None when it has no target). What needs the
    image (boxes and masks inside it, an RLE's size) is check_against_image's."""
    if type(record) is not dict:
        raise ValueError(f"expected a JSON object with \"image\", \"phrase\" and \"box\" (or \"boxes\"), got "
                         f"{type(record).__name__} (write one object per line)")
    image, phrase = record.get("image"), record.get("phrase")
    has_box, has_boxes = "box" in record, "boxes" in record
    if image is None or phrase is None or not (has_box or has_boxes):
        missing = [key for key in REQUIRED if key not in record] + ([] if has_box or has_boxes else ["box"])
        if missing:
            raise ValueError(f"missing key {', '.join(repr(k) for k in missing)} (every line needs \"image\", "
                             f"\"phrase\" and \"box\", or \"boxes\" for zero or several targets)")
    if has_box and has_boxes:
        raise ValueError("both \"box\" and \"boxes\" (keep \"box\" for one target, or \"boxes\" for zero, one or "
                         "several)")
    if has_box and "masks" in record:
        raise ValueError("\"masks\" goes with \"boxes\" (with \"box\" give one \"mask\")")
    if has_boxes and "mask" in record:
        raise ValueError("\"mask\" goes with \"box\" (with \"boxes\" give \"masks\", one per box)")
    if type(image) is not str or not image.strip():
        raise ValueError(f"\"image\" must be a non-empty path relative to --data_root, got {image!r}")
    if type(phrase) is not str or not phrase.strip():
        raise ValueError("empty phrase (give the expression that refers to the object, or remove the line)")
    extra = {}
    if len(record) > 3:
        if "type" in record:
            if not isinstance(record["type"], str) or not record["type"]:
                raise ValueError(f"\"type\" must be a non-empty string, got {record['type']!r}")
            extra["type"] = record["type"]
        if "id" in record:
            extra["id"] = record["id"]
        if "coco_id" in record:
            coco_id = record["coco_id"]
            if type(coco_id) is not int or coco_id < 0:
                raise ValueError(f"\"coco_id\" must be a COCO image id (a whole number), got {coco_id!r}")
            extra["coco_id"] = coco_id
    if has_box:
        box = check_box(record["box"], "box")
        if "mask" in record:
            check_mask(record["mask"])
            extra["mask"] = record["mask"]
        return image, box, phrase, extra
    boxes = record["boxes"]
    if not isinstance(boxes, list):
        raise ValueError(f"\"boxes\" must be a list of [x1, y1, x2, y2] ([] when nothing in the image is meant), got "
                         f"{json.dumps(boxes)[:80]}")
    extra["boxes"] = [check_box(b, f"boxes[{k}]") for k, b in enumerate(boxes)]
    if "masks" in record:
        masks = record["masks"]
        if not boxes and masks:
            raise ValueError("a record with no target (\"boxes\": []) has no mask (remove \"masks\")")
        if not isinstance(masks, list) or len(masks) != len(boxes):
            count = len(masks) if isinstance(masks, list) else type(masks).__name__
            raise ValueError(f"\"masks\" has {count} entries for {len(boxes)} boxes (give one mask per box, in the "
                             f"same order)")
        for k, mask in enumerate(masks):
            try:
                check_mask(mask)
            except ValueError as err:
                raise ValueError(f"masks[{k}]: {err}") from None
        extra["masks"] = masks
    return image, union_box(extra["boxes"]), phrase, extra


NUMBERS = {int, float}


def check_box(box, name):
    """[x1, y1, x2, y2] as floats, or ValueError naming the field."""
    try:
        x1, y1, x2, y2 = box if type(box) is list else ()
        if not {type(x1), type(y1), type(x2), type(y2)} <= NUMBERS:
            raise ValueError
        x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
        if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
            raise ValueError
    except (ValueError, OverflowError):
        raise ValueError(f"{name} must be four numbers [x1, y1, x2, y2], got {json.dumps(box)[:80]}") from None
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"degenerate {name} {[x1, y1, x2, y2]} (x2 must exceed x1 and y2 exceed y1; boxes are "
                         f"[x1, y1, x2, y2], not [x, y, w, h])")
    return [x1, y1, x2, y2]


def union_box(boxes):
    """The smallest box around all of `boxes`, None for none."""
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def target_kind(count):
    return KINDS[min(count, 2)]


def targets_of(box, extra):
    """(boxes, masks or None) of a checked record: one target for "box", the list for "boxes"."""
    if "boxes" in extra:
        return extra["boxes"], extra.get("masks")
    return [box], [extra["mask"]] if "mask" in extra else None


def check_mask(mask):
    """A COCO polygon list or an RLE dict, checked for shape only (check_against_image compares with the image)."""
    if isinstance(mask, dict):
        size, counts = mask.get("size"), mask.get("counts")
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and v > 0 for v in size)):
            raise ValueError(f"bad mask: an RLE needs \"size\": [height, width], got {size!r}")
        if not (isinstance(counts, str) and counts) and not (
                isinstance(counts, list) and counts and all(isinstance(v, int) and v >= 0 for v in counts)):
            raise ValueError("bad mask: an RLE needs \"counts\", a COCO-compressed string or a list of run lengths")
        if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
            raise ValueError(f"bad mask: the RLE's run lengths add up to {sum(counts)}, not height x width = "
                             f"{size[0] * size[1]}")
        return
    if not isinstance(mask, list) or not mask:
        raise ValueError("bad mask: expected COCO polygons [[x1, y1, x2, y2, ...], ...] or an RLE "
                         "{\"size\": [h, w], \"counts\": ...}")
    for k, polygon in enumerate(mask):
        if not isinstance(polygon, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon):
            raise ValueError(f"bad mask: polygon {k} must be a flat list of numbers [x1, y1, x2, y2, ...]")
        if len(polygon) % 2:
            raise ValueError(f"bad mask: polygon {k} has an odd number of coordinates ({len(polygon)})")
        if len(polygon) < 6:
            raise ValueError(f"bad mask: polygon {k} has {len(polygon) // 2} points; a polygon needs at least 3")


def check_against_image(box, mask, width, height, orientation="as stored"):
    """What is wrong with a record's box or mask given its image's size (in the orientation the boxes are read in,
    named by `orientation`), or None."""
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
        return f"box {box} outside the {width}x{height} image ({orientation})"
    if isinstance(mask, dict) and list(mask["size"]) != [height, width]:
        return (f"bad mask: the RLE's size {mask['size']} is not the image's [height, width] = "
                f"[{height}, {width}]")
    if isinstance(mask, list):
        xs = [v for polygon in mask for v in polygon[0::2]]
        ys = [v for polygon in mask for v in polygon[1::2]]
        if min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height:
            return f"bad mask: a polygon lies outside the {width}x{height} image"
    return None


def rasterize(mask, height, width):
    """COCO polygons [[x, y, ...], ...] or an RLE {"size", "counts"} -> bool [height, width] (pycocotools); the
    parts of a multi-part object are merged (their union)."""
    if isinstance(mask, dict):
        rle = mask if isinstance(mask["counts"], str) else coco_mask.frPyObjects(mask, *mask["size"])
        return coco_mask.decode(rle).astype(bool)
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(mask, height, width))).astype(bool)


def write_jsonl(path, records):
    """Records (dicts) as JSON lines, written atomically."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))
