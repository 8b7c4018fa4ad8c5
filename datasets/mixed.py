"""Several datasets trained as one (--dataset A,B,...), and the rule that keeps evaluation images out of training.

RefCOCO, RefCOCO+ and RefCOCOg draw their images from COCO train2014, so the training split of one holds images of
another's val and test splits (RefCOCOg-google's splits partition objects, not images, so it even overlaps itself).
When datasets are mixed, every training expression whose image is in a val or test split of a dataset of the same
image source found under --split_root (mixed in or not), or in --holdout_images, is dropped.
"""
import bisect
import re
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset

from .catalog import CATALOG
from .index import open_split_index
from .records import split_files

# Datasets that draw their images from one collection: an image of one may be an image of another.
SOURCES = {"unc": "coco", "unc+": "coco", "gref": "coco", "gref_umd": "coco", "referit": "saiapr", "flickr": "flickr",
           "demo": "demo", "grefcoco": "coco"}
COCO_ID = re.compile(r"COCO_[a-z]+\d{4}_0*(\d+)\.\w+$")
TRAINING_SPLITS = {"train", "trainval"}


def dataset_names(text):
    """--dataset "A,B" -> ["A", "B"] (one name: a plain run)."""
    names = [name.strip() for name in str(text).split(",")]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"--dataset {text!r}: give distinct dataset names separated by commas, e.g. unc,unc+,gref_umd")
    bad = [name for name in names if ":" in name]
    if bad:
        raise ValueError(f"--dataset: a dataset name may not contain ':' ({', '.join(bad)})")
    return names


def source_of(dataset):
    """The image collection a dataset draws from (a JSONL dataset: its own)."""
    return SOURCES.get(dataset, dataset)


def image_key(file_name):
    """What identifies an image across datasets: its COCO id where the file name carries one, else its file name."""
    name = Path(str(file_name).strip()).name
    match = COCO_ID.search(name)
    if match:
        return "coco", int(match.group(1))
    return "file", name


def read_holdout_list(path):
    """--holdout_images: one image file name or COCO image id per line (datasets.build_index exclude's output)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--holdout_images {path} not found: one image file name or COCO image id per line")
    keys = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.add(("coco", int(line)) if line.isdigit() else image_key(line))
    return keys


def evaluation_images(split_root, source, index_cache=None):
    """{image key: "dataset/split"} of every val / test split of the datasets of `source` found under split_root, read
    from the splits' indexes (built if need be)."""
    splits = []
    for dataset in (name for name, own in SOURCES.items() if own == source and name in CATALOG):
        splits += [(dataset, split, Path(split_root) / dataset / f"{dataset}_{split}.pth")
                   for split in CATALOG[dataset]["splits"]]
    # JSONL datasets: one of a known source (gRefCOCO, written by datasets.build_index), or its own source.
    jsonl = [name for name, own in SOURCES.items() if own == source and name not in CATALOG]
    for dataset in jsonl if source in SOURCES.values() else [source]:
        splits += [(dataset, split, path) for split, path in split_files(Path(split_root), dataset).items()]
    held = {}
    for dataset, split, path in splits:
        if split in TRAINING_SPLITS or not path.is_file():
            continue
        index = open_split_index([path], dataset, split, index_cache)
        for name in index.image_names():
            held.setdefault(image_key(name), f"{dataset}/{split}")
        if index.coco_id is not None:
            for coco_id in np.unique(index.coco_id[index.coco_id >= 0]).tolist():
                held.setdefault(("coco", coco_id), f"{dataset}/{split}")
    return held


def drop_evaluation_images(datasets, split_root, holdout=(), index_cache=None):
    """Drop from each training dataset (in place) the expressions whose image is in an evaluation split of its image
    source under split_root or in holdout (image keys); a record's "coco_id" is checked against the COCO-based
    splits too. -> {dataset: {"kept", "dropped", "dropped_images"}}"""
    report, held_by_source = {}, {}
    for dataset in datasets:
        sources = [source_of(dataset.dataset)] + (["coco"] if dataset.index.coco_id is not None else [])
        held = set(holdout)
        for source in sources:
            if source not in held_by_source:
                held_by_source[source] = evaluation_images(split_root, source, index_cache)
            held.update(held_by_source[source])
        names = dataset.image_names()
        images = dataset.image_keys()
        out = np.array([image_key(name) in held for name in names], bool)[images]
        if dataset.index.coco_id is not None:
            held_ids = [key[1] for key in held if key[0] == "coco"]
            out |= np.isin(dataset.column(dataset.index.coco_id), np.array(held_ids, np.int64))
        indices = np.flatnonzero(out)
        report[dataset.dataset] = {"kept": len(images) - len(indices), "dropped": len(indices),
                                   "dropped_images": sorted(names[k] for k in np.unique(images[indices]))}
        if len(indices) == len(images) and len(images):
            raise ValueError(f"{dataset.dataset}/{dataset.split}: the image of every training expression is in an "
                             f"evaluation split (or --holdout_images); nothing of it is left to train on. Leave it out "
                             f"of --dataset, or give --allow_test_images")
        dataset.drop(indices)
    return report


class MixedDataset(ConcatDataset):
    """The datasets of a mix as one: sample i is sample i - offset of its dataset, keeping its dataset's name
    (sample_info "dataset"); the indices, image ids and per-sample methods are the mix's."""

    def __init__(self, datasets):
        super().__init__(datasets)
        self.names = [d.dataset for d in datasets]
        self.dataset = "+".join(self.names)
        self._image_keys = None

    def part(self, idx):
        """(the dataset of sample idx, its index there)."""
        k = bisect.bisect_right(self.cumulative_sizes, idx)  # as ConcatDataset.__getitem__ finds it
        return self.datasets[k], idx - (self.cumulative_sizes[k - 1] if k else 0)

    def set_epoch(self, epoch):
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def sample_info(self, idx):
        dataset, local = self.part(idx)
        return {**dataset.sample_info(local), "dataset": dataset.dataset}

    def has_masks(self):
        return any(d.has_masks() for d in self.datasets)

    def n_targets(self, idx):
        dataset, local = self.part(idx)
        return dataset.n_targets(local)

    def is_generalized(self):
        return any(d.is_generalized() for d in self.datasets)

    def gt_mask(self, idx, image_size=None):
        dataset, local = self.part(idx)
        return dataset.gt_mask(local, image_size)

    def image_size(self, idx):
        dataset, local = self.part(idx)
        return dataset.image_size(local)

    def load_image(self, idx):
        dataset, local = self.part(idx)
        return dataset.load_image(local)

    def target_counts(self):
        return np.concatenate([d.target_counts() for d in self.datasets])

    def image_keys(self):
        """The mix's number of each sample's image (one per image path: two datasets may share an image folder)."""
        if self._image_keys is None:
            numbers, parts = {}, []
            for d in self.datasets:
                table = np.array([numbers.setdefault(str(d.image_dir / name), len(numbers))
                                  for name in d.image_names()], np.int64)
                parts.append(table[d.image_keys()] if len(d) else np.zeros(0, np.int64))
            self._image_keys = np.concatenate(parts)
        return self._image_keys

    def image_id(self, idx):
        return int(self.image_keys()[idx])

    def __getitem__(self, idx):
        dataset, local = self.part(idx)
        sample = dataset[local]
        sample["index"] = idx
        if "image_id" in sample:  # an evaluation sample: the mix's number of its image
            sample["image_id"] = self.image_id(idx)
        return sample
