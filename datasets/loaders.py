"""From index files to DataLoaders: the dataset of a split, the batch format, the training and validation loaders."""
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .grounding import GroundingDataset
from .samplers import ResumableBatchSampler, ShardSampler, world_and_rank
from .tokenizer import build_tokenizer
from .transforms import make_transforms

BATCH_KEYS = ("img", "img_mask", "image_rect", "text_ids", "text_mask", "target", "pos_region", "index")


def build_dataset(split, args, tokenizer=None, augment=None):
    """Split `split` of args.dataset: training augmentation for train/trainval (drawn per sample from args.seed, the
    epoch and the index), the eval transform otherwise; augment=False forces the eval transform."""
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
    )
    if with_masks and not dataset.has_masks():
        raise ValueError(f"--mask_supervision mask: no sample of {args.dataset}/{split} has a mask; give the records "
                         f"a \"mask\" (docs/custom_data.md) or train with --mask_supervision box")
    return dataset


def collate_fn(batch):
    """List of samples -> dict of stacked tensors: img [B,3,S,S] float, img_mask [B,S,S] bool, image_rect [B,4]
    long, text_ids/text_mask [B,L] long, target [B,4] float, pos_region [B,S,S] bool, index [B] long; and from a
    dataset with masks gt_mask [B,S,S] bool, has_mask [B] bool."""
    out = {key: torch.stack([sample[key] for sample in batch]) for key in BATCH_KEYS if key != "index"}
    out["index"] = torch.tensor([sample["index"] for sample in batch], dtype=torch.long)
    if "gt_mask" in batch[0]:
        out["gt_mask"] = torch.stack([sample["gt_mask"] for sample in batch])
        out["has_mask"] = torch.tensor([sample["has_mask"] for sample in batch], dtype=torch.bool)
    return out


def build_loaders(args, tokenizer):
    """(training loader, validation loader): the training batches shuffled per epoch across the processes and
    resumable mid-epoch, the validation samples sharded so that each is evaluated exactly once."""
    world, rank = world_and_rank()
    dataset_train = build_dataset("train", args, tokenizer)
    dataset_val = build_dataset("val", args, tokenizer)
    if len(dataset_train) < args.batch_size * world:
        raise ValueError(f"the training split has {len(dataset_train)} samples, fewer than one global batch "
                         f"({args.batch_size} x {world} processes)")
    # The sampler's permutation depends only on seed and epoch, so a resumed run sees the same batches.
    sampler_train = DistributedSampler(dataset_train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    pin = torch.device(args.device).type == "cuda"
    batches = ResumableBatchSampler(sampler_train, args.batch_size, drop_last=True)
    # Each loader draws its workers' base seed from its own generator, not from the global stream that dropout
    # uses: creating an iterator on a resume must not shift that stream (the augmentation is seeded per sample).
    loader_train = DataLoader(dataset_train, batch_sampler=batches, collate_fn=collate_fn,
                              num_workers=args.num_workers, pin_memory=pin,
                              generator=torch.Generator().manual_seed(args.seed + rank))
    loader_val = DataLoader(dataset_val, batch_size=args.batch_size, collate_fn=collate_fn,
                            sampler=ShardSampler(len(dataset_val), rank, world), num_workers=args.num_workers,
                            pin_memory=pin, generator=torch.Generator().manual_seed(args.seed + rank))
    return loader_train, loader_val


def build_subset_loader(loader_val, args):
    """The first --eval_subset validation samples (their dataset indices are their positions, as evaluate needs)."""
    dataset = loader_val.dataset
    subset = Subset(dataset, range(min(args.eval_subset, len(dataset))))
    world, rank = world_and_rank()
    return DataLoader(subset, batch_size=args.batch_size, collate_fn=collate_fn, num_workers=args.num_workers,
                      sampler=ShardSampler(len(subset), rank, world))
