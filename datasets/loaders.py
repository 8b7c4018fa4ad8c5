"""From index files to DataLoaders: the dataset of a split, the batch format, the training and validation loaders."""
import argparse

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from .catalog import index_files, is_builtin
from .grounding import GroundingDataset
from .mixed import TRAINING_SPLITS, MixedDataset, dataset_names, drop_evaluation_images, read_holdout_list
from .samplers import ImageBatchSampler, MixSampler, ResumableBatchSampler, ShuffledSampler, world_and_rank
from .tokenizer import build_tokenizer
from .transforms import make_transforms

BATCH_KEYS = ("img", "img_mask", "image_rect", "text_ids", "text_mask", "target", "pos_region", "index")


def build_dataset(split, args, tokenizer=None, augment=None):
    """Split `split` of args.dataset: training augmentation for train/trainval (drawn per sample from args.seed, the
    epoch and the index), the eval transform otherwise; augment=False forces the eval transform. Several datasets
    (--dataset A,B) give a MixedDataset; its training split without the images of any evaluation split
    (datasets.mixed), what was dropped in its `dropped` ({dataset: {"kept", "dropped", "dropped_images"}}). A JSONL
    dataset of a mix without the evaluation split asked for (Visual Genome has a training split only) is left out of
    it."""
    names = dataset_names(args.dataset)
    if len(names) == 1:
        return build_single_dataset(split, args, tokenizer, augment)
    tokenizer = tokenizer or build_tokenizer(args)
    if split not in TRAINING_SPLITS:
        absent = [name for name in names
                  if not is_builtin(name) and not all(f.is_file() for f in index_files(args.split_root, name, split))]
        if absent and len(absent) < len(names):
            print(f"{', '.join(absent)}: no {split} split; the mix's {split} split is the other datasets'")
            names = [name for name in names if name not in absent]
    parts = [build_single_dataset(split, argparse.Namespace(**{**vars(args), "dataset": name}), tokenizer, augment)
             for name in names]
    dropped = None
    if split in TRAINING_SPLITS and not args.allow_test_images:
        holdout = read_holdout_list(args.holdout_images) if args.holdout_images else set()
        dropped = drop_evaluation_images(parts, args.split_root, holdout, args.index_cache or None)
    mixed = MixedDataset(parts)
    mixed.dropped = dropped
    return mixed


def build_single_dataset(split, args, tokenizer=None, augment=None):
    train = split in ("train", "trainval") if augment is None else augment
    # True masks are read only where they train the fine head: never for evaluation, never under box supervision.
    with_masks = train and args.mask_head == "fine" and args.mask_supervision == "mask" and args.seg_loss == "on"
    dataset = GroundingDataset(
        data_root=args.data_root,
        split_root=args.split_root,
        dataset=args.dataset,
        split=split,
        transform=make_transforms(args, train=train),
        tokenizer=tokenizer or build_tokenizer(args),
        max_query_len=args.max_query_len,
        float_boxes=args.float_boxes,
        augment_seed=args.seed if train else None,
        cache=args.cache_data,
        with_masks=with_masks,
        exif=args.exif,
        index_cache=args.index_cache or None,
    )
    if with_masks and not dataset.has_masks():
        raise ValueError(f"--mask_supervision mask: no sample of {args.dataset}/{split} has a mask; give the records "
                         f"a \"mask\" (docs/custom_data.md) or train with --mask_supervision box")
    return dataset


def collate_fn(batch, skip=()):
    """List of samples -> dict of stacked tensors: img [B,3,S,S] float, img_mask [B,S,S] bool, image_rect [B,4]
    long, text_ids/text_mask [B,L] long, target [B,4] float, pos_region [B,S,S] bool, index [B] long, n_targets [B]
    long (the phrase's number of targets: 0, 1 or several); and from a
    dataset with masks gt_mask [B,S,S] bool, has_mask [B] bool. skip: keys left out."""
    out = {key: torch.stack([sample[key] for sample in batch]) for key in BATCH_KEYS
           if key != "index" and key not in skip}
    out["index"] = torch.tensor([sample["index"] for sample in batch], dtype=torch.long)
    if "n_targets" in batch[0]:
        out["n_targets"] = torch.tensor([sample["n_targets"] for sample in batch], dtype=torch.long)
    if "gt_mask" in batch[0]:
        out["gt_mask"] = torch.stack([sample["gt_mask"] for sample in batch])
        out["has_mask"] = torch.tensor([sample["has_mask"] for sample in batch], dtype=torch.bool)
    return out


def collate_by_image(batch):
    """collate_fn's batch with each distinct image once (samples of one image share their canvas under the
    evaluation transform): img [I,3,S,S], img_mask [I,S,S], and image_index [B] long, sample b's image."""
    slots, firsts = {}, []
    for sample in batch:
        if sample["image_id"] not in slots:
            slots[sample["image_id"]] = len(slots)
            firsts.append(sample)
    image_index = torch.tensor([slots[sample["image_id"]] for sample in batch])
    out = collate_fn(batch, skip=("img", "img_mask"))
    out["img"] = torch.stack([sample["img"] for sample in firsts])
    out["img_mask"] = torch.stack([sample["img_mask"] for sample in firsts])
    out["image_index"] = image_index
    return out


def build_eval_loader(dataset, batch_size, num_workers, pin_memory=False, seed=0):
    """Every sample of dataset (a GroundingDataset, or a Subset of one) exactly once over the processes, the
    expressions of an image in one batch where they fit, each image sent once (collate_by_image)."""
    world, rank = world_and_rank()
    if isinstance(dataset, Subset):
        keys = np.asarray(dataset.dataset.image_keys())[np.asarray(dataset.indices, np.int64)]
    else:
        keys = dataset.image_keys()
    return DataLoader(dataset, batch_sampler=ImageBatchSampler(keys, batch_size, rank, world),
                      collate_fn=collate_by_image, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed + rank))


def parse_ratios(text, count):
    """--dataset_ratios "1,1,2" -> [1.0, 1.0, 2.0], one per dataset."""
    try:
        ratios = [float(v) for v in text.split(",")]
    except ValueError:
        ratios = []
    if len(ratios) != count:
        raise ValueError(f"--dataset_ratios {text!r}: give {count} comma-separated numbers, one per dataset of "
                         f"--dataset, e.g. {','.join(['1'] * count)}")
    return ratios


def build_loaders(args, tokenizer):
    """(training loader, validation loader): the training batches shuffled per epoch across the processes and
    resumable mid-epoch, the validation samples sharded by image so that each is evaluated exactly once."""
    world, rank = world_and_rank()
    dataset_train = build_dataset("train", args, tokenizer)
    dataset_val = build_dataset("val", args, tokenizer)
    if len(dataset_train) < args.batch_size * world:
        raise ValueError(f"the training split has {len(dataset_train)} samples, fewer than one global batch "
                         f"({args.batch_size} x {world} processes)")
    # The sampler's permutation depends only on seed and epoch, so a resumed run sees the same batches.
    if args.dataset_ratios:
        if not isinstance(dataset_train, MixedDataset):
            raise ValueError("--dataset_ratios needs several datasets in --dataset")
        ratios = parse_ratios(args.dataset_ratios, len(dataset_train.datasets))
        empty = [name for name, part in zip(dataset_train.names, dataset_train.datasets) if not len(part)]
        if empty:
            raise ValueError(f"--dataset_ratios: {', '.join(empty)} has no training sample to draw")
        sampler_train = MixSampler([len(d) for d in dataset_train.datasets], ratios, args.seed, rank, world)
    else:
        sampler_train = ShuffledSampler(dataset_train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    pin = torch.device(args.device).type == "cuda"
    batches = ResumableBatchSampler(sampler_train, args.batch_size, drop_last=True)
    # Each loader draws its workers' base seed from its own generator, not from the global stream that dropout
    # uses: creating an iterator on a resume must not shift that stream (the augmentation is seeded per sample).
    loader_train = DataLoader(dataset_train, batch_sampler=batches, collate_fn=collate_fn,
                              num_workers=args.num_workers, pin_memory=pin,
                              generator=torch.Generator().manual_seed(args.seed + rank))
    loader_val = build_eval_loader(dataset_val, args.batch_size, args.num_workers, pin, args.seed)
    return loader_train, loader_val


def build_subset_loader(loader_val, args):
    """The first --eval_subset validation samples (of each dataset of a mix)."""
    dataset = loader_val.dataset
    if isinstance(dataset, MixedDataset):  # the first samples of each dataset
        starts = [0, *dataset.cumulative_sizes[:-1]]
        indices = [start + k for start, part in zip(starts, dataset.datasets) for k in range(min(args.eval_subset, len(part)))]
    else:
        indices = range(min(args.eval_subset, len(dataset)))
    subset = Subset(dataset, indices)
    return build_eval_loader(subset, args.batch_size, args.num_workers, seed=args.seed)
