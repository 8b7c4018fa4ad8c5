"""The built-in datasets (docs/data.md): where their images and index files are, and the TransVG/SegVG index tuple
format (docs/original.md, "Data"); any other dataset is a JSON-lines one (datasets/records.py)."""
import math
from pathlib import Path

import torch

from .records import index_path, split_files

_COCO = {"image_dir": "other/images/mscoco/images/train2014", "box": "xywh", "fields": 5}
CATALOG = {
    "unc": dict(_COCO, splits=("train", "val", "trainval", "testA", "testB")),
    "unc+": dict(_COCO, splits=("train", "val", "trainval", "testA", "testB")),
    "gref": dict(_COCO, splits=("train", "val")),
    "gref_umd": dict(_COCO, splits=("train", "val", "test")),
    "referit": {"image_dir": "referit/images", "box": "xyxy", "fields": 5,
                "splits": ("train", "val", "trainval", "test")},
    "flickr": {"image_dir": "Flickr30k/flickr30k_images", "box": "xyxy", "fields": 3,
               "splits": ("train", "val", "test")},
    # Built-in synthetic set (datasets/demo.py); the 2nd field is the instance label in demo/masks/.
    "demo": {"image_dir": "demo/images", "mask_dir": "demo/masks", "box": "xywh", "fields": 5,
             "splits": ("train", "val", "test")},
}

# Lengths of the published index files (docs/data.md) and the demo defaults.
EXPECTED_SIZES = {
    "unc": {"train": 120624, "val": 10834, "testA": 5657, "testB": 5095},
    "unc+": {"train": 120191, "val": 10758, "testA": 5726, "testB": 4889},
    "gref": {"train": 85474, "val": 9536},
    "gref_umd": {"train": 80512, "val": 4896, "test": 9602},
    "referit": {"train": 54127, "val": 5842, "trainval": 59969, "test": 60103},
    "flickr": {"train": 427193, "val": 14433, "test": 14481},
    "demo": {"train": 20000, "val": 1000, "test": 1000},
}


def is_builtin(dataset):
    return dataset in CATALOG


def image_dir(data_root, dataset):
    """Where a dataset's image paths start: a built-in one's image folder, --data_root itself for any other."""
    return Path(data_root) / CATALOG[dataset]["image_dir"] if is_builtin(dataset) else Path(data_root)


def how_to_get(dataset):
    """One line telling the user how to obtain `dataset`."""
    if dataset == "demo":
        return ("Generate it with `python -m datasets.demo --output_dir DIR`, then pass --data_root DIR --split_root "
                "DIR/split.")
    if not is_builtin(dataset):
        return (f"Write {dataset}_<split>.jsonl files there (docs/custom_data.md, or convert CSV / ODVG files with "
                f"`python -m datasets.build_index`); check them with `python -m datasets.validate`.")
    return ("Download the SegVG/TransVG data index files into --split_root and the images into --data_root as "
            "docs/data.md describes; check the result with `python -m datasets.validate`.")


def index_files(split_root, dataset, split):
    """Index files that make up `split`; trainval is train + val except for referit (and JSONL datasets that have a
    trainval file of their own)."""
    if not is_builtin(dataset):
        own = index_path(split_root, dataset, split)
        if split == "trainval" and not own.is_file():
            return [index_path(split_root, dataset, part) for part in ("train", "val")]
        return [own]
    splits = CATALOG[dataset]["splits"]
    if split not in splits:
        raise ValueError(f"dataset '{dataset}' has no split '{split}'; its splits are {list(splits)}")
    parts = ["train", "val"] if split == "trainval" and dataset != "referit" else [split]
    return [Path(split_root) / dataset / f"{dataset}_{part}.pth" for part in parts]


def require_index_file(path, dataset):
    """path, or FileNotFoundError saying what to do when the index file (or its folder) is absent."""
    path = Path(path)
    if not path.is_file():
        missing = f"index file {path}" if path.parent.is_dir() else f"index folder {path.parent}"
        if not is_builtin(dataset) and path.parent.is_dir():
            found = sorted(split_files(path.parent.parent, dataset))
            missing += f" (the splits found: {', '.join(found) or 'none'})"
        raise FileNotFoundError(f"{missing} not found. {how_to_get(dataset)}")
    return path


def load_entries(path, dataset):
    """The tuples of a built-in dataset's index file (.pth), with an error that says what to do when the file is
    absent or unreadable."""
    path = require_index_file(path, dataset)
    try:
        return list(torch.load(path, weights_only=True))
    except Exception as err:
        raise RuntimeError(f"cannot load index file {path}: {err}") from err


def check_entry(entry, dataset):
    """One index tuple of a built-in dataset -> (image file, its four box numbers as stored, phrase, extra fields).
    Raises ValueError describing a malformed entry."""
    spec = CATALOG[dataset]
    if not isinstance(entry, (tuple, list)) or len(entry) != spec["fields"]:
        layout = "(file, box, phrase)" if spec["fields"] == 3 else "(file, id, box, phrase, attribute)"
        raise ValueError(f"expected a {spec['fields']}-tuple {layout}, got {entry!r:.200}")
    if spec["fields"] == 3:
        file_name, box, phrase = entry
        extra = {}
    else:
        file_name, ann_id, box, phrase, attribute = entry
        extra = {"ann_id": ann_id, "attribute": attribute}
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"image file name must be a non-empty string, got {file_name!r}")
    if not isinstance(phrase, str):
        raise ValueError(f"phrase must be a string, got {phrase!r}")
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError, OverflowError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"box must be 4 finite numbers, got {box!r}")
    return file_name, values, phrase, extra


def box_as_loaded(values, dataset, float_boxes=False):
    """A built-in dataset's stored box -> x1, y1, x2, y2 as the loader uses it: like the original, each number is
    truncated to int before a COCO-family x, y, w, h is converted, unless float_boxes."""
    if not float_boxes:
        values = [float(int(v)) for v in values]
    if CATALOG[dataset]["box"] == "xywh":
        values = [values[0], values[1], values[0] + values[2], values[1] + values[3]]
    return values


def parse_entry(entry, dataset, float_boxes=False):
    """One index tuple -> (image file, xyxy box as the loader uses it, phrase, extra fields); ValueError when it is
    malformed."""
    file_name, values, phrase, extra = check_entry(entry, dataset)
    return file_name, box_as_loaded(values, dataset, float_boxes), phrase, extra
