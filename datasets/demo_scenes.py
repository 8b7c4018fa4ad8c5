"""The built-in demo's scenes and language: drawing a scene of coloured shapes, describing an object of it (the
writer) and `resolve`, the reader independent of the writer that every phrase is checked with (datasets/demo.py
writes the dataset; datasets/demo_gref.py its generalized level)."""
import functools
import itertools
import re
from dataclasses import dataclass

import cv2
import numpy as np

COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215),
           "yellow": (235, 205, 30), "purple": (140, 60, 180), "orange": (240, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
HEADS = ("one", "shape", "object")
# Direction word -> (axis, sign): the referent has the smallest sign * centre coordinate.
DIRECTIONS = {"left": (0, 1), "leftmost": (0, 1), "right": (0, -1), "rightmost": (0, -1),
              "top": (1, 1), "topmost": (1, 1), "bottom": (1, -1), "bottommost": (1, -1)}
RELATIONS = {"above": ("above",), "below": ("below",), "left": ("to", "the", "left", "of"),
             "right": ("to", "the", "right", "of")}
MARGIN = 0.1  # a position is clear when the runner-up's centre is this fraction of the image further

LEVELS = {
    "easy": {"image_size": (64, 96), "objects": (3, 3), "sides": {"large": (0.25, 0.40)},
             "attributes": ("colour", "shape"), "types": ("colour", "shape", "both", "position")},
    "hard": {"image_size": (96, 128), "objects": (3, 6), "sides": {"small": (0.12, 0.18), "large": (0.24, 0.32)},
             "attributes": ("size", "colour", "shape"), "types": ("attribute", "position", "relation")},
    # One-target phrases of the generalized level; its scenes repeat colours and shapes (datasets/demo_gref.py).
    "gref": {"image_size": (64, 96), "objects": (3, 4), "sides": {"large": (0.22, 0.32)},
             "attributes": ("colour", "shape"), "types": ("colour", "shape", "both", "position")},
}


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    box: tuple  # x1, y1, x2, y2 in pixels, exclusive end, tight around the mask

    def centre(self, axis):
        return (self.box[axis] + self.box[axis + 2]) / 2

    def matches(self, attrs):
        return all(getattr(self, key) == value for key, value in attrs.items())


# ---------------------------------------------------------------------------------------------- scenes

@functools.lru_cache(maxsize=None)
def _shape_mask(shape, side):
    """bool [side, side] of a shape filling its square."""
    u = (np.arange(side) + 0.5) / side - 0.5  # [-0.5, 0.5] across, column coordinate
    v = (np.arange(side)[:, None] + 0.5) / side  # (0, 1) downwards, row coordinate
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        return u ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":
        return np.abs(u) <= v / 2
    return np.abs(u) + np.abs(v - 0.5) <= 0.5  # diamond


def _place(rng, sides, width, height, gap=2, tries=100):
    """Non-overlapping square boxes (x, y, side) with at least `gap` pixels between them, or None."""
    placed = []
    for side in sides:
        for _ in range(tries):
            x, y = rng.randint(0, width - side), rng.randint(0, height - side)
            if all(x + side + gap <= px or px + ps + gap <= x or y + side + gap <= py or py + ps + gap <= y
                   for px, py, ps in placed):
                placed.append((x, y, side))
                break
        else:
            return None
    return placed


def draw_scene(rng, level, image_size=None):
    """rng: random.Random. -> (image uint8 [H,W,3] RGB, labels uint8 [H,W] with object k drawn as k + 1, [Obj])."""
    cfg = LEVELS[level]
    low, high = image_size or cfg["image_size"]
    width, height = rng.randint(low, high), rng.randint(low, high)
    count = rng.randint(*cfg["objects"])
    if level == "easy":
        colours = rng.sample(list(COLOURS), count)
        shapes = rng.sample(SHAPES, count)
    else:  # few colours and shapes per image, so that attributes repeat
        colours = rng.choices(rng.sample(list(COLOURS), rng.randint(2, 3)), k=count)
        shapes = rng.choices(rng.sample(SHAPES, rng.randint(2, 3)), k=count)
    sizes = rng.choices(list(cfg["sides"]), k=count)
    while True:
        sides = [max(4, round(rng.uniform(*cfg["sides"][s]) * min(width, height))) for s in sizes]
        placed = _place(rng, sides, width, height)
        if placed is not None:
            break

    grey = rng.randint(70, 190)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = [grey + rng.randint(-12, 12) for _ in range(3)]
    labels = np.zeros((height, width), np.uint8)
    objects = []
    for k, ((x, y, side), shape, colour, size) in enumerate(zip(placed, shapes, colours, sizes)):
        mask = _shape_mask(shape, side)
        labels[y:y + side, x:x + side][mask] = k + 1
        image[y:y + side, x:x + side][mask] = [min(max(c + rng.randint(-15, 15), 0), 255) for c in COLOURS[colour]]
        rows, cols = np.nonzero(mask)
        box = (x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1, y + int(rows.max()) + 1)
        objects.append(Obj(shape, colour, size, box))
    return image, labels, objects


# ------------------------------------------------------------------------------------ checker (reader)

def _extreme(candidates, objects, direction, extent):
    """Candidates that could be the extreme one in `direction`: the first plus any within the margin."""
    axis, sign = DIRECTIONS[direction]
    keys = {i: sign * objects[i].centre(axis) for i in candidates}
    best = min(keys.values(), default=0)
    return [i for i in candidates if keys[i] < best + MARGIN * extent[axis]]


def _holds(relation, a, b):
    """Whole-box relations: a is entirely above / below / left of / right of b."""
    if relation == "above":
        return a.box[3] <= b.box[1]
    if relation == "below":
        return a.box[1] >= b.box[3]
    if relation == "left":
        return a.box[2] <= b.box[0]
    return a.box[0] >= b.box[2]


def _read_noun_phrase(words, objects, extent):
    attrs = {}
    direction = None
    for word in words:
        if word in COLOURS:
            attrs["colour"] = word
        elif word in SHAPES:
            attrs["shape"] = word
        elif word in ("small", "large"):
            attrs["size"] = word
        elif word in DIRECTIONS:
            direction = word
    found = [i for i, obj in enumerate(objects) if obj.matches(attrs)]
    return _extreme(found, objects, direction, extent) if direction else found


def resolve(phrase, objects, width, height):
    """Indices of the objects that `phrase` can refer to; a valid expression gives exactly one."""
    words = re.findall(r"[a-z]+", phrase.lower())
    extent = (width, height)
    for relation, pattern in RELATIONS.items():
        n = len(pattern)
        for start in range(len(words) - n + 1):
            if tuple(words[start:start + n]) == pattern:
                landmark = _read_noun_phrase(words[start + n:], objects, extent)
                if len(landmark) != 1:
                    return []
                found = _read_noun_phrase(words[:start], objects, extent)
                return [i for i in found if i != landmark[0] and _holds(relation, objects[i], objects[landmark[0]])]
    return _read_noun_phrase(words, objects, extent)


# -------------------------------------------------------------------------------- writer (generator)

def _noun_phrase(rng, attrs, direction=None):
    words = [attrs[key] for key in ("size", "colour") if key in attrs]
    words.append(attrs.get("shape") or rng.choice(HEADS))
    if direction is None:
        return "the " + " ".join(words)
    if rng.random() < 0.5:
        return f"the {direction} " + " ".join(words)
    side = direction.removesuffix("most")
    return "the " + " ".join(words) + (" on the " if side in ("left", "right") else " at the ") + side


def _attribute_sets(obj, keys):
    """Every non-empty sub-description of obj over the attribute names `keys`."""
    return [{key: getattr(obj, key) for key in subset}
            for n in range(1, len(keys) + 1) for subset in itertools.combinations(keys, n)]


def _unique_names(objects, index, keys):
    return [a for a in _attribute_sets(objects[index], keys) if sum(o.matches(a) for o in objects) == 1]


def _by_attribute(rng, kind, objects, target, extent, keys):
    """colour / shape / both (easy) or any unique attribute set (hard)."""
    obj = objects[target]
    if kind == "both":
        return _noun_phrase(rng, {"colour": obj.colour, "shape": obj.shape})
    if kind in ("colour", "shape"):
        return _noun_phrase(rng, {kind: getattr(obj, kind)})
    names = _unique_names(objects, target, keys)
    return _noun_phrase(rng, rng.choice(names)) if names else None


def _by_position(rng, kind, objects, target, extent, keys):
    """Extreme position among all objects, or (hard) among those sharing some attributes."""
    valid = []
    for attrs in [{}] + _attribute_sets(objects[target], keys):
        found = [i for i, o in enumerate(objects) if o.matches(attrs)]
        if len(found) >= 2:
            valid += [(attrs, d) for d in ("leftmost", "rightmost", "top", "bottom")
                      if _extreme(found, objects, d, extent) == [target]]
    if not valid:
        return None
    attrs, direction = rng.choice(valid)
    if direction in ("top", "bottom") and rng.random() < 0.3:
        direction += "most"
    return _noun_phrase(rng, attrs, direction)


def _by_relation(rng, kind, objects, target, extent, keys):
    """The target (maybe ambiguous alone) relative to a uniquely named landmark."""
    options = []
    for landmark in range(len(objects)):
        names = _unique_names(objects, landmark, keys) if landmark != target else []
        for relation in RELATIONS:
            if names and _holds(relation, objects[target], objects[landmark]):
                for attrs in [{}] + _attribute_sets(objects[target], ("colour", "shape")):
                    found = [i for i, o in enumerate(objects) if i != landmark and o.matches(attrs)
                             and _holds(relation, o, objects[landmark])]
                    if found == [target]:
                        options.append((attrs, relation, names))
    if not options:
        return None
    attrs, relation, names = rng.choice(options)
    return f"{_noun_phrase(rng, attrs)} {' '.join(RELATIONS[relation])} {_noun_phrase(rng, rng.choice(names))}"


DESCRIBE = {"colour": _by_attribute, "shape": _by_attribute, "both": _by_attribute, "attribute": _by_attribute,
            "position": _by_position, "relation": _by_relation}


def verified_reference(rng, objects, extent, level, free):
    """(target, phrase, type) for one of the `free` objects, checked by `resolve`, or None."""
    cfg = LEVELS[level]
    # Type first, so that the shares stay even; then a target that this type can single out.
    for kind in rng.sample(cfg["types"], len(cfg["types"])):
        for target in rng.sample(free, len(free)):
            phrase = DESCRIBE[kind](rng, kind, objects, target, extent, cfg["attributes"])
            if phrase and resolve(phrase, objects, *extent) == [target]:
                return target, phrase, kind
    return None


def refer(rng, objects, extent, level, count):
    """Up to `count` verified (target, phrase, type) for distinct targets of one scene."""
    refs = []
    while len(refs) < count:
        free = [i for i in range(len(objects)) if i not in {ref[0] for ref in refs}]
        ref = verified_reference(rng, objects, extent, level, free) if free else None
        if ref is None:
            break
        refs.append(ref)
    return refs


def write_png(path, image):
    """uint8 [H, W] or [H, W, 3] BGR -> a PNG file."""
    path.write_bytes(cv2.imencode(".png", image)[1].tobytes())
