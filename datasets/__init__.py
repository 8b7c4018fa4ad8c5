"""Datasets, transforms and tokenizer for visual grounding (SPEC §4)."""
import torch

from .grounding import GroundingDataset
from .tokenizer import build_tokenizer, encode_text
from .transforms import make_transforms

__all__ = ["build_dataset", "build_tokenizer", "collate_fn", "encode_text"]

BATCH_KEYS = ("img", "img_mask", "text_ids", "text_mask", "target", "pos_region", "index")


def build_dataset(split, args, tokenizer=None):
    """Split `split` of args.dataset: training augmentation for train/trainval (drawn per sample from args.seed, the
    epoch and the index), the eval transform otherwise."""
    train = split in ("train", "trainval")
    return GroundingDataset(
        data_root=args.data_root,
        split_root=args.split_root,
        dataset=args.dataset,
        split=split,
        transform=make_transforms(args, train=train),
        tokenizer=tokenizer or build_tokenizer(args),
        max_query_len=args.max_query_len,
        float_boxes=args.float_boxes,
        augment_seed=args.seed if train else None,
    )


def collate_fn(batch):
    """List of samples -> dict of stacked tensors: img [B,3,S,S] float, img_mask [B,S,S] bool,
    text_ids/text_mask [B,L] long, target [B,4] float, pos_region [B,S,S] bool, index [B] long."""
    out = {key: torch.stack([sample[key] for sample in batch]) for key in BATCH_KEYS if key != "index"}
    out["index"] = torch.tensor([sample["index"] for sample in batch], dtype=torch.long)
    return out
