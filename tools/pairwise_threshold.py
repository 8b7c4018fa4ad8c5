"""Which pairs the fine head's pairwise term counts at each colour threshold, on a training split with masks (the
demo, JSONL records with "mask"): a good --pairwise_color_threshold counts most pairs within the object and within
the background and almost none across the object's outline (docs/model.md, "Why these pairwise settings").

    python tools/pairwise_threshold.py [--samples 512] [--thresholds 0.3 0.2 0.1 0.05] -- @tools/demo_flags.txt \\
        --dataset objects --data_root data/objects --split_root data/objects/split

The samples are the split's first ones as training sees them (its augmentation included), at the loss stride and
dilation the training flags give the fine head.
"""
import argparse
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import build_dataset, collate_fn  # noqa: E402
from models.mask_losses import (color_similarity, image_region, mask_loss_stride, pair_counts,  # noqa: E402
                                region_at_stride)
from utils.options import build_training_parser  # noqa: E402

CHUNK = 64  # samples per similarity computation


def count_pairs(dataset, samples, stride, dilation, thresholds):
    """pair_counts summed over the first `samples` samples of `dataset` that have a mask ({} when none has)."""
    totals = {}
    for start in tqdm(range(0, samples, CHUNK), desc="pairs", unit="chunk"):
        batch = collate_fn([dataset[i] for i in range(start, min(start + CHUNK, samples))])
        keep = batch["has_mask"]
        if not keep.any():
            continue
        regions = [region_at_stride(region, stride) for region in (
            batch["pos_region"][keep], image_region(batch["image_rect"][keep], batch["img"].shape[-1]),
            batch["gt_mask"][keep])]
        counts = pair_counts(color_similarity(batch["img"][keep], stride, dilation), *regions, dilation, thresholds)
        for kind, (pairs, counted) in counts.items():
            old_pairs, old_counted = totals.get(kind, (0.0, [0.0] * len(thresholds)))
            totals[kind] = (old_pairs + pairs, [a + b for a, b in zip(old_counted, counted)])
    return totals


def get_args_parser():
    parser = argparse.ArgumentParser(prog="tools/pairwise_threshold.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default=512, type=int, help="training samples to count over (the first ones)")
    parser.add_argument("--thresholds", default=[0.3, 0.2, 0.1, 0.05], type=float, nargs="+",
                        help="colour similarity thresholds to report")
    parser.add_argument("training_flags", nargs="*",
                        help="train.py flags after --: the dataset and model (--imsize, --mask_stride, ...)")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    # Masks are read only under --mask_supervision mask; the loss stride is the fine head's.
    args = build_training_parser().parse_args([*opts.training_flags, "--mask_head", "fine",
                                               "--mask_supervision", "mask"])
    try:
        dataset = build_dataset("train", args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    stride, dilation, samples = mask_loss_stride(args), args.pairwise_dilation, min(opts.samples, len(dataset))
    totals = count_pairs(dataset, samples, stride, dilation, opts.thresholds)
    if not totals:
        sys.exit(f"error: none of the first {samples} samples of {args.dataset}/train has a mask")
    candidates = sum(pairs for pairs, _ in totals.values())
    print(f"{args.dataset}/train, first {samples} samples, loss stride {stride}, dilation "
          f"{dilation}: {candidates:.0f} candidate pairs (centre in the box, both cells on the image)")
    print(f"{'pairs':<12}{'share':>7}   counted at threshold " + "".join(f"{t:>7g}" for t in opts.thresholds))
    for kind, (pairs, counted) in totals.items():
        shares = "".join(f"{c / max(pairs, 1):>7.3f}" for c in counted)
        print(f"{kind:<12}{pairs / max(candidates, 1):>7.3f}   {'':21}{shares}")


if __name__ == "__main__":
    main()
