"""Referring-expression datasets: the built-in ones in the TransVG/SegVG index format (docs/original.md, "Data") and
any other in the JSON-lines format of datasets/records.py (docs/custom_data.md), read from the split's memory-mapped
index (datasets/index)."""
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .catalog import CATALOG, box_as_loaded, image_dir, index_files, is_builtin
from .images import image_size as file_image_size
from .images import read_rgb
from .index import open_split_index
from .records import rasterize, targets_of
from .tokenizer import encode_text


def is_generalized(dataset):
    """Whether some phrase of dataset (a GroundingDataset, a mix of them, or any other) has no target or several."""
    return getattr(dataset, "is_generalized", lambda: False)()


class GroundingDataset(Dataset):
    """One split of a referring-expression dataset; samples are dicts of tensors (see collate_fn)."""

    def __init__(self, data_root, split_root, dataset, split, transform, tokenizer, max_query_len,
                 float_boxes=False, augment_seed=None, cache=False, with_masks=False, exif="apply", index_cache=None):
        """with_masks: samples also carry gt_mask [S, S] and has_mask (the true mask, for --mask_supervision mask);
        without it no mask file is ever read. exif: the orientation a JSONL dataset's boxes refer to
        (datasets.images); the built-in datasets always read the stored pixels, as their boxes were drawn on them.
        index_cache: the folder of the split's index file when not beside the split files (datasets.index)."""
        self.dataset = dataset
        self.exif = "ignore" if is_builtin(dataset) else exif
        self.split = split
        self.index_files = index_files(split_root, dataset, split)
        # Every record is checked when the index is built: a bad line stops the run before it starts.
        self.index = open_split_index(self.index_files, dataset, split, index_cache)
        # The rows of the index this split keeps (None: all); datasets.mixed drops rows of evaluation images.
        self.rows = None
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
        # The last image decoded (evaluation reads an image's expressions one after another).
        self.last_image = (None, None)

    def set_epoch(self, epoch):
        """With augment_seed, sample idx of epoch e is augmented from the seed (augment_seed, e, idx)."""
        self.epoch = epoch

    def __len__(self):
        return len(self.index) if self.rows is None else len(self.rows)

    def row(self, idx):
        """The index row of sample idx."""
        return idx if self.rows is None else int(self.rows[idx])

    def column(self, values):
        """A per-row array of the index restricted to this split's samples."""
        return values if self.rows is None else values[self.rows]

    def drop(self, indices):
        """Remove the samples `indices` from the split (the others keep their order and are renumbered)."""
        kept = np.arange(len(self.index)) if self.rows is None else self.rows
        dtype = np.int32 if len(self.index) < 1 << 31 else np.int64
        self.rows = np.delete(kept, np.asarray(indices, np.int64)).astype(dtype)

    def image_keys(self):
        """The image number of every sample in the split's image table (image_names()): what makes two samples
        share an image."""
        return self.column(self.index.image)

    def image_names(self):
        """The split's image files, by image number."""
        return self.index.image_names()

    def image_id(self, idx):
        """A number per distinct image of the split (sample idx's)."""
        return int(self.index.image[self.row(idx)])

    def _parse(self, idx):
        """(image file, x1, y1, x2, y2 as the loader uses it or None, phrase, extra) of sample idx."""
        r = self.row(idx)
        file_name, values, phrase, extra = self.index.row(r)
        if is_builtin(self.dataset):
            return file_name, box_as_loaded(values, self.dataset, self.float_boxes), phrase, extra
        if not self.float_boxes:
            values = values and [float(int(v)) for v in values]
            if "boxes" in extra:
                extra["boxes"] = [[float(int(v)) for v in box] for box in extra["boxes"]]
        return file_name, values, phrase, {**extra, "where": self.index.where(r)}

    def _where(self, idx):
        """How errors name sample idx: its file and line for a JSONL dataset."""
        if not is_builtin(self.dataset):
            return self.index.where(self.row(idx))
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
        return self.mask_dir is not None or bool(self.column(self.index.mask_rows()).any())

    def n_targets(self, idx):
        """How many objects sample idx's phrase refers to: 0, 1 or several ("boxes" records; 1 for any other)."""
        count = -1 if self.index.targets is None else int(self.index.targets[self.row(idx)])
        return 1 if count < 0 else count

    def target_counts(self):
        """n_targets of every sample (an array)."""
        return self.column(self.index.target_counts())

    def is_generalized(self):
        """Whether some phrase of the split has no target or several (a gRefCOCO-like dataset)."""
        boxes_form = self.index.boxes_form()
        return boxes_form is not None and bool((self.column(boxes_form) & (self.target_counts() != 1)).any())

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
