"""How well statistics of the segmentation map tell a phrase whose object is in the image from one whose object is not:
the AUROC of each candidate on a split with no-target phrases, and its best N-acc + T-acc there. The mask presence of
evaluation.presence (--presence_from mask) is the candidate chosen this way (docs/generalized.md).

    python tools/presence_statistics.py --checkpoint CKPT --dataset demo_gref --eval_set val [--data_root R ...]
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import build_dataset, build_eval_loader
from evaluation.generalized_metrics import auroc
from evaluation.presence import choose_threshold, mask_presence, segmentation_maps
from evaluation.segmentation_map import canvas_probabilities, segmentation_confidence
from models.pretrained import load_from_checkpoint

TOPS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1)


def candidates(out, size):
    """{name: [B] scores} of a model output's segmentation maps: statistics of the canvas probabilities of seg_logits,
    and of canvas logits: of seg_logits, and where the model has a fine head of the grid head's map and of both maps
    (evaluation.presence.mask_presence, the one chosen)."""
    prob = canvas_probabilities(out["seg_logits"], size)
    flat = prob.flatten(1)
    scores = {"probabilities: max": flat.max(1).values}
    for top in TOPS:
        k = max(1, round(top * flat.shape[1]))
        scores[f"probabilities: mean of the top {top:.2%}"] = flat.topk(k, 1).values.mean(1)
    scores["probabilities: mean above 0.35 (the paper's confidence)"] = segmentation_confidence(prob)
    scores["probabilities: share above 0.5"] = (flat > 0.5).float().mean(1)
    scores["probabilities: mean of the map"] = flat.mean(1)
    maps = segmentation_maps(out)
    named = {"fine map" if len(maps) > 1 else "map": maps[0]}
    if len(maps) > 1:
        named.update({"grid map": maps[1], "both maps": maps})
    for name, value in named.items():
        scores.update({f"logits, {name}: mean of the top {top:.2%}": mask_presence(value, size, top) for top in TOPS})
    return scores


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python tools/presence_statistics.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint to read the maps of")
    parser.add_argument("--dataset", help="a dataset with no-target phrases [default: the checkpoint's]")
    parser.add_argument("--eval_set", default="val", help="its split (choose on val, report on test)")
    parser.add_argument("--data_root", help="image root [default: the checkpoint's]")
    parser.add_argument("--split_root", help="index root [default: the checkpoint's]")
    parser.add_argument("--batch_size", default=32, type=int, help="expressions per forward pass")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    return parser


@torch.inference_mode()
def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    overrides = {k: getattr(opts, k) for k in ("data_root", "split_root") if getattr(opts, k)}
    model, tokenizer, args, _ = load_from_checkpoint(opts.checkpoint, overrides)
    model.eval()
    args.dataset = opts.dataset or args.dataset
    dataset = build_dataset(opts.eval_set, args, tokenizer)
    scores, labels = {}, []
    for batch in tqdm(build_eval_loader(dataset, opts.batch_size, 0), desc="maps"):
        out = model(batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"], aux=False,
                    image_index=batch["image_index"])
        for name, values in candidates(out, args.imsize).items():
            scores.setdefault(name, []).extend(values.tolist())
        labels += [dataset.n_targets(i) > 0 for i in batch["index"].tolist()]
    print(f"{opts.checkpoint} on {args.dataset}:{opts.eval_set}: {sum(labels)} phrases with a target, "
          f"{len(labels) - sum(labels)} without")
    print("| statistic | AUROC | best threshold there | N-acc | T-acc |\n|---|---|---|---|---|")
    report = {}
    for name, values in scores.items():
        threshold, n_acc, t_acc = choose_threshold(values, labels)
        report[name] = {"auroc": auroc(values, labels), "threshold": threshold, "n_acc": n_acc, "t_acc": t_acc}
        print(f"| {name} | {report[name]['auroc']:.4f} | {threshold:.7g} | {n_acc:.3f} | {t_acc:.3f} |")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
