"""Built-in synthetic referring-expression dataset ("demo"), written in the RefCOCO layout.

    python -m datasets.demo --out DIR [--level easy|hard|gref] [--seed 0]

writes DIR/demo/images/<split>_<n>.png, DIR/demo/masks/<split>_<n>.png (instance labels, 0 = background)
and DIR/split/demo/demo_<split>.pth, lists of (file, instance label, [x, y, w, h], phrase, expression type);
train with --dataset demo --data_root DIR --split_root DIR/split.

easy: 3 large objects (side 25-40% of the image) of distinct colours and shapes, referred to by colour,
shape, both or position. hard: 3-6 objects with repeated colours/shapes and two sizes, referred to by
attributes, position among similar objects, or a relation to another object. Every phrase is re-read
by `resolve`, a parser independent of the generator, and kept only if it picks exactly its target. gref: phrases
with no target or several besides one, written as the JSON-lines dataset demo_gref (datasets/demo_gref.py).
"""
import argparse
import random
import time
from pathlib import Path

import cv2
import torch

from .demo_gref import NAME as GREF_NAME
from .demo_gref import generate as generate_gref
from .demo_scenes import LEVELS, draw_scene, refer, write_png

SPLITS = {"train": 20000, "val": 1000, "test": 1000}


def generate_split(rng, level, count, split, out_dir, refs_per_image=2, image_size=None):
    """Draw images until `count` verified expressions exist; -> list of 5-tuples (RefCOCO layout).

    rng: random.Random. Each tuple: (image file, instance label in the mask file, [x, y, w, h], phrase, type).
    """
    image_dir, mask_dir = out_dir / "demo" / "images", out_dir / "demo" / "masks"
    entries = []
    n_image = 0
    while len(entries) < count:
        image, labels, objects = draw_scene(rng, level, image_size)
        extent = (image.shape[1], image.shape[0])
        refs = refer(rng, objects, extent, level, min(refs_per_image, count - len(entries)))
        file_name = f"{split}_{n_image:06d}.png"
        for target, phrase, kind in refs:
            x1, y1, x2, y2 = objects[target].box
            entries.append((file_name, target + 1, [x1, y1, x2 - x1, y2 - y1], phrase, kind))
        if refs:
            write_png(image_dir / file_name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            write_png(mask_dir / file_name, labels)
            n_image += 1
    return entries


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m datasets.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", "--out", dest="output_dir", required=True,
                        help="folder that receives demo/ and split/demo/")
    parser.add_argument("--level", default="easy", choices=sorted(LEVELS),
                        help="easy: 3 distinct shapes per image; hard: 3-6 with repeats, relations; gref: phrases with "
                             "no target or several too, as the JSONL dataset demo_gref")
    parser.add_argument("--no_target_share", default=0.1, type=float,
                        help="gref: chance that a phrase has no target (gRefCOCO: about 1 in 10)")
    parser.add_argument("--several_share", default=0.3, type=float,
                        help="gref: chance that a phrase has several targets (gRefCOCO: about 3 in 10)")
    parser.add_argument("--seed", default=0, type=int, help="seed of the generator (one stream per split)")
    for split, default in SPLITS.items():
        parser.add_argument(f"--{split}", default=default, type=int, help=f"expressions in {split}")
    parser.add_argument("--refs_per_image", default=2, type=int, help="expressions per image (distinct targets)")
    parser.add_argument("--image_size", nargs=2, type=int, metavar=("MIN", "MAX"),
                        help="image side range in pixels (default: easy 64 96, hard 96 128)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    out = Path(args.output_dir)
    start = time.perf_counter()
    if args.level == "gref":
        generate_gref(out, args.seed, {split: getattr(args, split) for split in SPLITS},
                 {"none": args.no_target_share, "several": args.several_share}, args.refs_per_image, args.image_size)
        print(f"demo (gref) written to {out} in {time.perf_counter() - start:.1f} s; use --dataset {GREF_NAME} "
              f"--data_root {out} --split_root {out / 'split'}")
        return
    for folder in ("demo/images", "demo/masks", "split/demo"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        # One stream per split: val/test do not change when the train size does.
        rng = random.Random(f"demo-{args.seed}-{split}")
        entries = generate_split(rng, args.level, getattr(args, split), split, out, args.refs_per_image,
                                 args.image_size)
        torch.save(entries, out / "split" / "demo" / f"demo_{split}.pth")
        print(f"{split}: {len(entries)} expressions")
    print(f"demo ({args.level}) written to {out} in {time.perf_counter() - start:.1f} s; "
          f"use --dataset demo --data_root {out} --split_root {out / 'split'}")


if __name__ == "__main__":
    main()
