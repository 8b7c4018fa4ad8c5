"""A second synthetic referring-expression dataset, written in the formats users bring their own data in (JSONL with
polygon masks, CSV, ODVG), to try the own-data route end to end (docs/custom_data.md).

    python -m datasets.objects --output_dir DIR [--name objects] [--format jsonl|csv|odvg] [--background noise]

Unlike the demo: other objects (star, cross, hexagon, arrow), other colours, textured backgrounds (noise or
stripes), other phrasing ("the pink star", "the item furthest to the left"), images of 56-128 px per side in
several aspect ratios. Three objects per image, distinct in colour and in shape; each expression names its target
by colour, shape, both or position, and a position is used only when the target is clearly the extreme one.
"""
import argparse
import csv
import json
import math
import random
from pathlib import Path

import cv2
import numpy as np

from .records import write_jsonl

COLOURS = {"pink": (230, 90, 170), "cyan": (40, 200, 210), "brown": (130, 80, 30), "lime": (150, 220, 40),
           "navy": (20, 30, 110), "gray": (120, 120, 120)}
SHAPES = ("star", "cross", "hexagon", "arrow")
POSITIONS = {"left": (0, 1, "the item furthest to the left"), "right": (0, -1, "the item furthest to the right"),
             "top": (1, 1, "the highest item"), "bottom": (1, -1, "the lowest item")}
TYPES = ("colour", "shape", "both", "position")
SPLITS = {"train": 3000, "val": 300, "test": 300}


def outline(shape, x, y, side):
    """The shape's polygon [(x, y), ...] inside the square (x, y, side)."""
    c, r = side / 2, side / 2
    if shape == "star":
        points = [(c + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                   c - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
    elif shape == "hexagon":
        points = [(c + r * math.cos(k * math.pi / 3), c + r * math.sin(k * math.pi / 3)) for k in range(6)]
    elif shape == "cross":
        a, b = 0.32 * side, 0.68 * side
        points = [(a, 0), (b, 0), (b, a), (side, a), (side, b), (b, b), (b, side), (a, side), (a, b), (0, b),
                  (0, a), (a, a)]
    else:  # an arrow pointing up
        points = [(c, 0), (side, 0.5 * side), (0.68 * side, 0.5 * side), (0.68 * side, side), (0.32 * side, side),
                  (0.32 * side, 0.5 * side), (0, 0.5 * side)]
    return [(x + px, y + py) for px, py in points]


def background(rng, kind, width, height):
    base = np.array([rng.randint(200, 245) for _ in range(3)], np.float32)
    if kind == "stripes":
        period = rng.randint(6, 14)
        stripes = ((np.arange(width)[None, :] + np.arange(height)[:, None]) // period) % 2
        image = base + 18.0 * stripes[..., None]
    else:
        image = base + np.random.default_rng(rng.randrange(2 ** 32)).normal(0, 10, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def scene(rng, kind):
    """An image and its three objects: [{"colour", "shape", "box", "polygon"}]."""
    width, height = rng.randint(56, 128), rng.randint(56, 128)
    for _ in range(200):
        objects, taken = [], []
        for colour, shape in zip(rng.sample(list(COLOURS), 3), rng.sample(SHAPES, 3)):
            side = rng.uniform(0.28, 0.42) * min(width, height)
            x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
            if any(x < bx + bs + 2 and bx < x + side + 2 and y < by + bs + 2 and by < y + side + 2
                   for bx, by, bs in taken):
                break
            taken.append((x, y, side))
            polygon = outline(shape, x, y, side)
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            objects.append({"colour": colour, "shape": shape, "polygon": polygon,
                            "box": [round(min(xs), 2), round(min(ys), 2), round(max(xs), 2), round(max(ys), 2)]})
        if len(objects) == 3:
            break
    else:
        raise RuntimeError("could not place three objects")
    image = background(rng, kind, width, height)
    for obj in objects:
        cv2.fillPoly(image, [np.round(np.array(obj["polygon"]) - 0.5).astype(np.int32)], COLOURS[obj["colour"]])
    return image, objects


def expression(rng, objects, target, width, height):
    """(phrase, type) naming objects[target] alone, or None when the drawn position is not clear."""
    obj = objects[target]
    kind = rng.choice(TYPES)
    if kind == "colour":
        return f"the {obj['colour']} {rng.choice(('thing', 'item', 'one'))}", kind
    if kind == "shape":
        return f"the {obj['shape']}", kind
    if kind == "both":
        return f"the {obj['colour']} {obj['shape']}", kind
    name = rng.choice(list(POSITIONS))
    axis, sign, phrase = POSITIONS[name]
    centres = sorted((sign * (o["box"][axis] + o["box"][axis + 2]) / 2, k) for k, o in enumerate(objects))
    extent = width if axis == 0 else height
    if centres[0][1] != target or abs(centres[1][0] - centres[0][0]) < 0.1 * extent:
        return None
    return phrase, kind


def generate(output_dir, name, fmt, kind, seed, counts):
    out = Path(output_dir)
    (out / name / "images").mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        rng = random.Random(f"objects-{seed}-{split}")
        records, images = [], []
        while len(records) < count:
            image, objects = scene(rng, kind)
            file_name = f"{name}/images/{split}_{len(images)}.png"
            cv2.imwrite(str(out / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            regions = []
            for target in rng.sample(range(3), 2):
                named = expression(rng, objects, target, image.shape[1], image.shape[0])
                if named is not None and len(records) + len(regions) < count:
                    polygon = [round(v, 2) for point in objects[target]["polygon"] for v in point]
                    regions.append({"image": file_name, "phrase": named[0], "box": objects[target]["box"],
                                    "type": named[1], "mask": [polygon]})
            images.append((file_name, image.shape, regions))
            records += regions
        write(out, name, split, fmt, records, images)
        print(f"{split}: {len(records)} expressions on {len(images)} images")


def write(out, name, split, fmt, records, images):
    if fmt == "jsonl":
        write_jsonl(out / "split" / name / f"{name}_{split}.jsonl", records)
    elif fmt == "csv":
        with (out / f"{name}_{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["phrase", "x1", "y1", "x2", "y2", "image", "type"])  # any column order is accepted
            writer.writerows([r["phrase"], *r["box"], r["image"], r["type"]] for r in records)
    else:
        lines = [{"filename": file_name, "height": shape[0], "width": shape[1],
                  "grounding": {"caption": ". ".join(r["phrase"] for r in regions),
                                "regions": [{"bbox": r["box"], "phrase": r["phrase"]} for r in regions]}}
                 for file_name, shape, regions in images if regions]
        (out / f"{name}_{split}.odvg.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m datasets.objects", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True,
                        help="folder of the images (<name>/images) and the annotations: split/<name>/ for jsonl, "
                             "<name>_<split>.csv or <name>_<split>.odvg.jsonl for the others")
    parser.add_argument("--name", default="objects", help="the dataset's name")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "csv", "odvg"], help="annotation format")
    parser.add_argument("--background", default="noise", choices=["noise", "stripes"], help="background texture")
    parser.add_argument("--seed", default=0, type=int, help="seed of the generator (one stream per split)")
    for split, default in SPLITS.items():
        parser.add_argument(f"--{split}", default=default, type=int, help=f"expressions in {split}")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    generate(opts.output_dir, opts.name, opts.format, opts.background, opts.seed,
             {split: getattr(opts, split) for split in SPLITS})


if __name__ == "__main__":
    main()
