"""The demo's generalized level (`python -m datasets.demo --level gref`): phrases with one target, several ("the red
shapes", "both circles", "every square") or none, the no-target ones misleading on purpose ("the purple circle" where
there is a purple square and a red circle), written as the JSON-lines dataset `demo_gref` (docs/custom_data.md):

    DIR/demo_gref/images/<split>_<n>.png and DIR/split/demo_gref/demo_gref_<split>.jsonl, records
    {"image", "phrase", "boxes": [[x1, y1, x2, y2], ...], "masks": [RLE, ...], "type"}

Scenes hold 3-4 large objects whose colours and shapes repeat. Every phrase is re-read by `resolve_set`, a reader
independent of the writer, and kept only when it names exactly its targets (none for a no-target phrase).
"""
import random
import re
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from .demo_scenes import COLOURS, SHAPES, draw_scene, resolve, verified_reference, write_png
from .records import write_jsonl

NAME = "demo_gref"
PLURAL_HEADS = ("shapes", "ones", "objects")
COUNT_WORDS = {"both": 2, "two": 2, "three": 3}


# ------------------------------------------------------------------------------------------ reader

def resolve_set(phrase, objects, width, height):
    """The objects `phrase` refers to, sorted: a singular phrase as demo.resolve reads it, a plural one ("the red
    shapes", "both circles", "every square") all the objects with its attributes. None when a count word disagrees
    with what matches ("both" over three circles)."""
    words = re.findall(r"[a-z]+", phrase.lower())
    plural_shapes = {f"{shape}s": shape for shape in SHAPES}
    plural = any(w in plural_shapes or w in PLURAL_HEADS or w in COUNT_WORDS or w in ("every", "all") for w in words)
    if not plural:
        return sorted(resolve(phrase, objects, width, height))
    attrs = {}
    for word in words:
        if word in COLOURS:
            attrs["colour"] = word
        elif word in SHAPES or word in plural_shapes:
            attrs["shape"] = plural_shapes.get(word, word)
    found = [i for i, obj in enumerate(objects) if obj.matches(attrs)]
    counts = [COUNT_WORDS[w] for w in words if w in COUNT_WORDS]
    if counts and found and counts[0] != len(found):
        return None
    return found


# ------------------------------------------------------------------------------------------ writer

def _several(rng, objects):
    """(targets, phrase) naming every object that shares an attribute set, at least two; or None."""
    # Each object's colour-and-shape pair once per object: pairs shared by several objects are drawn more often.
    candidates = [{"colour": c} for c in COLOURS] + [{"shape": s} for s in SHAPES]
    candidates += [{"colour": o.colour, "shape": o.shape} for o in objects]
    options = [a for a in candidates if sum(o.matches(a) for o in objects) >= 2]
    if not options:
        return None
    attrs = rng.choice(options)
    targets = [i for i, o in enumerate(objects) if o.matches(attrs)]
    colour = attrs.get("colour", "")
    noun = f"{attrs['shape']}s" if "shape" in attrs else rng.choice(PLURAL_HEADS)
    if "shape" in attrs and rng.random() < 0.3:
        phrase = f"every {colour} {attrs['shape']}"
    elif len(targets) == 2 and rng.random() < 0.5:
        phrase = f"{rng.choice(('both', 'the two'))} {colour} {noun}"
    else:
        phrase = f"{rng.choice(('the', 'all the', 'all'))} {colour} {noun}"
    return targets, " ".join(phrase.split())


def _no_target(rng, objects):
    """A phrase that no object answers: preferably a colour and a shape both in the image but never together (the
    misleading kind), else a colour or shape the image does not have."""
    # Sorted: a set's order changes with the interpreter's hash seed, and the draws below must not.
    colours, shapes = sorted({o.colour for o in objects}), sorted({o.shape for o in objects})
    misleading = [(c, s) for c in colours for s in shapes if not any(o.colour == c and o.shape == s for o in objects)]
    if misleading and rng.random() < 0.8:
        colour, shape = rng.choice(misleading)
    else:
        colour = rng.choice([c for c in COLOURS if c not in colours] or list(COLOURS))
        shape = rng.choice(SHAPES)
    if rng.random() < 0.2:
        return f"the {colour} {shape}s"
    return f"the {colour} {shape}"


def _reference(rng, objects, extent, kind):
    """(targets, phrase, type) of the asked kind, verified by resolve_set; or None."""
    if kind == "none":
        phrase = _no_target(rng, objects)
        return ([], phrase, "none") if resolve_set(phrase, objects, *extent) == [] else None
    if kind == "several":
        drawn = _several(rng, objects)
        if drawn is None or resolve_set(drawn[1], objects, *extent) != drawn[0]:
            return None
        return drawn[0], drawn[1], "several"
    ref = verified_reference(rng, objects, extent, "gref", list(range(len(objects))))
    if ref is None or resolve_set(ref[1], objects, *extent) != [ref[0]]:
        return None
    return [ref[0]], ref[1], ref[2]


def _rle(mask):
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def generate_split(rng, count, split, out_dir, shares, refs_per_image=2, image_size=None):
    """Draw scenes until `count` verified phrases exist; -> JSONL records. shares: {"none": p, "several": q}, the
    chance that a phrase has no target / several (the rest have one)."""
    image_dir = out_dir / NAME / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records, n_image = [], 0
    while len(records) < count:
        image, labels, objects = draw_scene(rng, "gref", image_size)
        extent = (image.shape[1], image.shape[0])
        file_name = f"{NAME}/images/{split}_{n_image:06d}.png"
        phrases = set()
        for _ in range(min(refs_per_image, count - len(records))):
            draw = rng.random()
            kind = "none" if draw < shares["none"] else "several" if draw < shares["none"] + shares["several"] \
                else "one"
            ref = _reference(rng, objects, extent, kind)
            if ref is None or ref[1] in phrases:
                continue
            targets, phrase, kind = ref
            phrases.add(phrase)
            record = {"image": file_name, "phrase": phrase, "boxes": [list(map(float, objects[t].box)) for t in targets]}
            if targets:
                record["masks"] = [_rle(labels == t + 1) for t in targets]
            records.append({**record, "type": kind})
        if phrases:
            write_png(out_dir / file_name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            n_image += 1
    return records


def generate(out_dir, seed, counts, shares, refs_per_image=2, image_size=None):
    """Every split of demo_gref into out_dir; -> {split: records}."""
    out_dir = Path(out_dir)
    written = {}
    for split, count in counts.items():
        rng = random.Random(f"demo-{seed}-{split}-gref")
        records = generate_split(rng, count, split, out_dir, shares, refs_per_image, image_size)
        write_jsonl(out_dir / "split" / NAME / f"{NAME}_{split}.jsonl", records)
        kinds = {k: sum(len(r["boxes"]) == n if n < 2 else len(r["boxes"]) >= 2 for r in records)
                 for k, n in (("none", 0), ("one", 1), ("several", 2))}
        print(f"{split}: {len(records)} expressions ({kinds['none']} no target, {kinds['one']} one, "
              f"{kinds['several']} several)")
        written[split] = records
    return written
