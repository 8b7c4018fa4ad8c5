"""Referring-expression datasets: the built-in ones in the TransVG/SegVG index format (docs/original.md, "Data") and
any other in the JSON-lines format of datasets/records.py (docs/custom_data.md)."""
import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import image_size as file_image_size
from .images import read_rgb
from .records import RecordError, check_record, index_path, rasterize, read_records, split_files, targets_of
from .tokenizer import encode_text

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


def load_index(path, dataset):
    """The entries of one index file (tuples; for JSONL files (where, record) pairs), with an error that says what
    to do when the file is absent."""
    path = Path(path)
    if not path.is_file():
        missing = f"index file {path}" if path.parent.is_dir() else f"index folder {path.parent}"
        if not is_builtin(dataset) and path.parent.is_dir():
            found = sorted(split_files(path.parent.parent, dataset))
            missing += f" (the splits found: {', '.join(found) or 'none'})"
        raise FileNotFoundError(f"{missing} not found. {how_to_get(dataset)}")
    if path.suffix == ".jsonl":
        return read_records(path)
    try:
        return list(torch.load(path, weights_only=True))
    except Exception as err:
        raise RuntimeError(f"cannot load index file {path}: {err}") from err


def parse_entry(entry, dataset, float_boxes=False):
    """One index entry -> (image file, xyxy box as the loader uses it, phrase, extra fields).

    COCO-family boxes are x,y,w,h; like the original, each number is truncated to int before the
    conversion to x1,y1,x2,y2 unless float_boxes (JSONL boxes too). Raises ValueError describing a malformed entry.
    """
    if not is_builtin(dataset):
        where, record = entry
        try:
            file_name, values, phrase, extra = check_record(record)
        except ValueError as err:
            raise RecordError(f"{where}: {err}") from None
        if not float_boxes:
            values = values and [float(int(v)) for v in values]
            if "boxes" in extra:
                extra["boxes"] = [[float(int(v)) for v in box] for box in extra["boxes"]]
        return file_name, values, phrase, {**extra, "where": where}
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
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"box must be 4 finite numbers, got {box!r}")
    if not float_boxes:
        values = [float(int(v)) for v in values]
    if spec["box"] == "xywh":
        values[2] += values[0]
        values[3] += values[1]
    return file_name, values, phrase, extra


def number_images(keys):
    """[image key of each sample] -> [number of its image], numbered in order of first appearance."""
    numbers = {}
    return [numbers.setdefault(key, len(numbers)) for key in keys]


def is_generalized(dataset):
    """Whether some phrase of dataset (a GroundingDataset, a mix of them, or any other) has no target or several."""
    return getattr(dataset, "is_generalized", lambda: False)()


class GroundingDataset(Dataset):
    """One split of a referring-expression dataset; samples are dicts of tensors (see collate_fn)."""

    def __init__(self, data_root, split_root, dataset, split, transform, tokenizer, max_query_len,
                 float_boxes=False, augment_seed=None, cache=False, with_masks=False, exif="apply"):
        """with_masks: samples also carry gt_mask [S, S] and has_mask (the true mask, for --mask_supervision mask);
        without it no mask file is ever read. exif: the orientation a JSONL dataset's boxes refer to
        (datasets.images); the built-in datasets always read the stored pixels, as their boxes were drawn on them."""
        self.dataset = dataset
        self.exif = "ignore" if is_builtin(dataset) else exif
        self.split = split
        self.index_files = index_files(split_root, dataset, split)
        self.entries = [entry for path in self.index_files for entry in load_index(path, dataset)]
        self.image_dir = image_dir(data_root, dataset)
        mask_dir = CATALOG.get(dataset, {}).get("mask_dir")
        self.mask_dir = Path(data_root) / mask_dir if mask_dir else None
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.float_boxes = float_boxes
        self.with_masks = with_masks
        self.augment_seed = augment_seed
        self.epoch = 0
        # file name -> decoded image, phrase -> token ids and mask; each loader process fills its own copy.
        self.cache = {"images": {}, "texts": {}, "labels": {}} if cache else None
        # A JSONL dataset's records are checked and parsed once, now: a bad line stops the run before it starts, and
        # no sample re-checks its record at every epoch.
        self.parsed = None
        self._image_keys = self._image_ids = None
        # The last image decoded (evaluation reads an image's expressions one after another).
        self.last_image = (None, None)
        if not is_builtin(dataset):
            self.parsed = [self._parse(idx) for idx in range(len(self.entries))]

    def set_epoch(self, epoch):
        """With augment_seed, sample idx of epoch e is augmented from the seed (augment_seed, e, idx)."""
        self.epoch = epoch

    def __len__(self):
        return len(self.entries)

    def drop(self, indices):
        """Remove the samples `indices` from the split (the others keep their order and are renumbered)."""
        out = set(indices)
        keep = [k for k in range(len(self.entries)) if k not in out]
        self.entries = [self.entries[k] for k in keep]
        if self.parsed is not None:
            self.parsed = [self.parsed[k] for k in keep]
        self._image_keys = self._image_ids = None

    def image_keys(self):
        """The image file of every sample (what makes two samples share an image)."""
        if self._image_keys is None:
            self._image_keys = [self._parse(idx)[0] for idx in range(len(self))]
        return self._image_keys

    def image_id(self, idx):
        """A number per distinct image of the split (sample idx's)."""
        if self._image_ids is None:
            self._image_ids = number_images(self.image_keys())
        return self._image_ids[idx]

    def _parse(self, idx):
        if self.parsed is not None:
            return self.parsed[idx]
        try:
            return parse_entry(self.entries[idx], self.dataset, self.float_boxes)
        except RecordError:
            raise
        except ValueError as err:
            raise ValueError(f"{self.dataset}/{self.split} sample {idx}: malformed index entry: {err}. "
                             f"Run `python -m datasets.validate` on this dataset.") from None

    def _where(self, idx):
        """How errors name sample idx: its file and line for a JSONL dataset."""
        if not is_builtin(self.dataset):
            return self.entries[idx][0]
        return f"{self.dataset}/{self.split} sample {idx}"

    def sample_info(self, idx):
        """Metadata of sample idx without reading the image: image path, raw phrase, xyxy box (the union of the
        targets' for a "boxes" record, None when it has no target, with "boxes" the list), the expression type where
        the dataset has one (the demo; "type" in JSONL), and for the demo the instance mask (file, label)."""
        file_name, box, phrase, extra = self._parse(idx)
        info = {"image": str(self.image_dir / file_name), "phrase": phrase, "box": box, **extra}
        if "type" in extra:
            info["expr_type"] = info.pop("type")
        if self.mask_dir is not None:
            info.update(expr_type=extra["attribute"], mask=str(self.mask_dir / file_name),
                        mask_label=extra["ann_id"])
        return info

    def instance_mask(self, idx):
        """Ground-truth instance mask of sample idx, bool [H, W] (datasets that ship masks only)."""
        if self.mask_dir is None:
            raise ValueError(f"dataset '{self.dataset}' has no instance masks")
        info = self.sample_info(idx)
        labels = self.cache["labels"].get(info["mask"]) if self.cache is not None else None
        if labels is None:
            with Image.open(info["mask"]) as image:
                labels = np.asarray(image)
            if self.cache is not None:
                self.cache["labels"][info["mask"]] = labels
        return labels == info["mask_label"]

    def has_masks(self):
        """Whether any sample has a ground-truth mask (the demo's instance masks, "mask" or "masks" in JSONL
        records)."""
        if self.mask_dir is not None:
            return True
        return not is_builtin(self.dataset) and any("mask" in record or "masks" in record
                                                    for _, record in self.entries)

    def n_targets(self, idx):
        """How many objects sample idx's phrase refers to: 0, 1 or several ("boxes" records; 1 for any other)."""
        if self.parsed is None:
            return 1
        return len(self.parsed[idx][3].get("boxes", [None]))

    def is_generalized(self):
        """Whether some phrase of the split has no target or several (a gRefCOCO-like dataset)."""
        return self.parsed is not None and any(len(extra.get("boxes", [None])) != 1 for *_, extra in self.parsed)

    def gt_mask(self, idx, image_size=None):
        """Ground-truth mask of sample idx at its image's size, bool [H, W] (the union of its targets' masks, empty
        when it has no target), or None when it has none. image_size: (width, height) when known (saves opening the
        image)."""
        if self.mask_dir is not None:
            return self.instance_mask(idx)
        file_name, box, _, extra = self._parse(idx)
        boxes, masks = targets_of(box, extra)
        if masks is None and boxes:
            return None
        width, height = image_size or self.image_size(idx)
        union = np.zeros((height, width), bool)
        for mask in masks or []:
            union |= rasterize(mask, height, width)
        return union

    def image_size(self, idx):
        """(width, height) of sample idx's image in the orientation its boxes refer to, from the file's header."""
        return file_image_size(self.sample_info(idx)["image"], self.exif)

    def load_image(self, idx):
        """uint8 [H, W, 3] RGB image of sample idx."""
        return self._read(idx, self._parse(idx)[0])

    def _read(self, idx, file_name):
        if self.cache is not None and file_name in self.cache["images"]:
            return self.cache["images"][file_name]
        if self.last_image[0] == file_name:
            return self.last_image[1]
        where = self._where(idx)
        try:
            img = read_rgb(self.image_dir / file_name, self.exif)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{where}: {err}") from None
        except ValueError as err:
            raise RuntimeError(f"{where}: {err}") from err
        if self.cache is not None:  # the transforms never write into their input image
            self.cache["images"][file_name] = img
        self.last_image = (file_name, img)
        return img

    def _encode(self, text):
        if self.cache is None:
            return encode_text(self.tokenizer, text, self.max_query_len)
        if text not in self.cache["texts"]:
            self.cache["texts"][text] = encode_text(self.tokenizer, text, self.max_query_len)
        return self.cache["texts"][text]

    def __getitem__(self, idx):
        file_name, box, phrase, extra = self._parse(idx)
        boxes = extra.get("boxes", [box])
        # A phrase with no target carries an empty box, one with several the union box and each target's box.
        sample = {"img": self._read(idx, file_name), "box": np.float32(box or [0, 0, 0, 0]), "text": phrase.lower()}
        if len(boxes) != 1:
            sample["boxes"] = np.float32(boxes).reshape(-1, 4)
        mask = None
        if self.with_masks:
            height, width = sample["img"].shape[:2]
            mask = self.gt_mask(idx, (width, height))
            sample["mask"] = mask.astype(np.uint8) * 255 if mask is not None else np.zeros((height, width), np.uint8)
        if self.augment_seed is not None:
            # The augmentation of a sample depends only on (seed, epoch, index), not on which DataLoader worker
            # draws it or on what was drawn before: a run resumed mid-epoch continues exactly.
            random.seed(f"{self.augment_seed}-{self.epoch}-{idx}")
        out = self.transform(sample)
        ids, mask = self._encode(out.pop("text"))
        out["text_ids"] = torch.tensor(ids, dtype=torch.long)
        out["text_mask"] = torch.tensor(mask, dtype=torch.long)
        out["index"] = idx
        out["n_targets"] = len(boxes)
        if self.augment_seed is None:  # evaluation batches send each image once (datasets.loaders.collate_by_image)
            out["image_id"] = self.image_id(idx)
        if self.with_masks:
            out["has_mask"] = mask is not None
        return out
