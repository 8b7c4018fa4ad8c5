"""Several datasets trained as one (--dataset A,B,...), and the rule that keeps evaluation images out of training.

RefCOCO, RefCOCO+ and RefCOCOg draw their images from COCO train2014, so the training split of one holds images of
another's val and test splits (RefCOCOg-google's splits partition objects, not images, so it even overlaps itself).
When datasets are mixed, every training expression whose image is in a val or test split of a dataset of the same
image source found under --split_root (mixed in or not), or in --holdout_images, is dropped.
"""
import bisect
import re
from pathlib import Path

from torch.utils.data import ConcatDataset

from .grounding import CATALOG, load_index, number_images, parse_entry
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


def evaluation_images(split_root, source):
    """{image key: "dataset/split"} of every val / test split of the datasets of `source` found under split_root."""
    held = {}
    candidates = [name for name, own in SOURCES.items() if own == source and name in CATALOG]
    for dataset in candidates:
        for split in CATALOG[dataset]["splits"]:
            path = Path(split_root) / dataset / f"{dataset}_{split}.pth"
            if split not in TRAINING_SPLITS and path.is_file():
                for entry in load_index(path, dataset):
                    held.setdefault(image_key(parse_entry(entry, dataset)[0]), f"{dataset}/{split}")
    # JSONL datasets: one of a known source (gRefCOCO, written by datasets.build_index), or its own source.
    jsonl = [name for name, own in SOURCES.items() if own == source and name not in CATALOG]
    for dataset in jsonl if source in SOURCES.values() else [source]:
        for split, path in split_files(Path(split_root), dataset).items():
            if split not in TRAINING_SPLITS:
                for where, record in load_index(path, dataset):
                    held.setdefault(image_key(record["image"]), f"{dataset}/{split}")
    return held


def drop_evaluation_images(datasets, split_root, holdout=()):
    """Drop from each training dataset (in place) the expressions whose image is in an evaluation split of its image
    source under split_root or in holdout (image keys). -> {dataset: {"kept", "dropped", "dropped_images"}}"""
    report, held_by_source = {}, {}
    for dataset in datasets:
        source = source_of(dataset.dataset)
        if source not in held_by_source:
            held_by_source[source] = evaluation_images(split_root, source)
        held = held_by_source[source]
        files = dataset.image_keys()
        out = [k for k, name in enumerate(files) if image_key(name) in held or image_key(name) in holdout]
        report[dataset.dataset] = {"kept": len(files) - len(out), "dropped": len(out),
                                   "dropped_images": sorted({files[k] for k in out})}
        dataset.drop(out)
    return report


class MixedDataset(ConcatDataset):
    """The datasets of a mix as one: sample i is sample i - offset of its dataset, keeping its dataset's name
    (sample_info "dataset"); the indices, image ids and per-sample methods are the mix's."""

    def __init__(self, datasets):
        super().__init__(datasets)
        self.names = [d.dataset for d in datasets]
        self.dataset = "+".join(self.names)
        self._image_keys = self._image_ids = None

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

    def image_keys(self):
        if self._image_keys is None:  # the image's path: two datasets may share an image folder
            self._image_keys = [str(d.image_dir / key) for d in self.datasets for key in d.image_keys()]
        return self._image_keys

    def image_id(self, idx):
        if self._image_ids is None:
            self._image_ids = number_images(self.image_keys())
        return self._image_ids[idx]

    def __getitem__(self, idx):
        dataset, local = self.part(idx)
        sample = dataset[local]
        sample["index"] = idx
        if "image_id" in sample:  # an evaluation sample: the mix's number of its image
            sample["image_id"] = self.image_id(idx)
        return sample
