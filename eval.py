"""Evaluate a SegVG checkpoint (ours or an official one) on one split or several: Acc@0.5, Acc@0.75 and mean IoU, and
the masks' mIoU, oIoU and Prec@0.5:0.9 where the dataset has ground-truth masks.

    python eval.py --checkpoint outputs/demo/best_checkpoint.pth --eval_set test
    torchrun --nproc_per_node 4 eval.py --checkpoint ckpt/gref_umd/best_checkpoint.pth --eval_set val,test \
        --data_root data/images --split_root data/split
    python eval.py --checkpoint CKPT --eval_sets unc:val,unc:testA,unc+:testB,gref_umd:test   # or --eval_sets paper

The model configuration and the tokenizer come from the checkpoint; the data flags below override its data paths.
"""
import argparse
import copy
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from datasets import build_dataset, build_eval_loader
from datasets.mixed import dataset_names
from datasets.records import write_jsonl
from engine import evaluate, format_stats, summarize_results
from evaluation.mask_metrics import MaskScorer
from evaluation.mask_refine import add_mask_refine_flag
from evaluation.overlays import write_dataset_overlays
from evaluation.predictions import evaluation_records, worst_and_best
from evaluation.presence import add_answer_flags, choose_threshold, presence_scores, presence_source, usable
from evaluation.segmentation_map import MASK_THRESHOLD
from inference.fast_path import prepare_for_inference
from inference.onnx_runtime import OnnxRuntimeModel
from models.checkpoint import CheckpointError
from models.pretrained import load_from_checkpoint
from utils.distributed import destroy_process_group, init_distributed_mode, is_main_process
from utils.files import FileWriteError, atomic_write
from utils.options import AMP_CHOICES, add_backend_flags, add_process_group_flags, add_tokenizer_flags
from utils.runtime import compile_model, limit_opencv_threads, set_tf32

# Flags that override the checkpoint's configuration when given.
DATA_FLAGS = ("data_root", "split_root", "exif", "index_cache", "bert_model", "vocab_file")
# The nine splits of the paper's tables (RefCOCO, RefCOCO+, RefCOCOg google and umd): --eval_sets paper.
PAPER_SPLITS = "unc:val,unc:testA,unc:testB,unc+:val,unc+:testA,unc+:testB,gref:val,gref_umd:val,gref_umd:test"


def get_args_parser():
    parser = argparse.ArgumentParser(prog="eval.py", description="Evaluate a SegVG checkpoint on one split.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", "--eval_model", dest="checkpoint", required=True,
                        help="checkpoint to evaluate, ours or an official one: a .pth file, a folder in the Hub's "
                             "layout or a Hub id ORG/NAME[@revision] (--eval_model is the original's name)")
    parser.add_argument("--eval_set", help="split(s) of --dataset to evaluate: val, test, testA, ..., or several, "
                                            "comma-separated (val,testA,testB) [default: test]")
    parser.add_argument("--eval_sets",
                        help="DATASET:SPLIT pairs, comma-separated (unc:val,unc+:testA,...), or 'paper' for the nine "
                             "splits of the paper's tables; replaces --eval_set and --dataset")
    parser.add_argument("--output_dir", default="",
                        help="folder of eval_<dataset>_<split>.json, eval_log.txt and overlays (default: the "
                             "checkpoint's folder)")
    parser.add_argument("--save_predictions", default="",
                        help="JSONL file of prediction records (image, phrase, box, score, gt_box, iou, index, type)")
    parser.add_argument("--visualize", default=0, type=int,
                        help="write N overlays (the worst and the best IoU halves) to <output_dir>/visualize")
    masks = parser.add_argument_group("masks")
    masks.add_argument("--mask_threshold", default=MASK_THRESHOLD, type=float,
                       help="probability above which a pixel belongs to the model's mask (docs/evaluation.md says how "
                            "the default was chosen)")
    masks.add_argument("--save_masks", action="store_true",
                       help="write each prediction's binary mask, at its image's size, to <output_dir>/masks (the "
                            "prediction record's \"mask\" names it)")
    masks.add_argument("--save_probabilities", action="store_true",
                       help="with --save_masks: also the probability maps (0-255 PNG) in <output_dir>/probabilities")
    add_mask_refine_flag(masks)
    generalized = parser.add_argument_group("no target or several (gRefCOCO-like data, --presence_head checkpoints; "
                                            "docs/generalized.md)")
    add_answer_flags(generalized)
    generalized.add_argument("--grec_score_threshold", default=0.7, type=float,
                             help="GREC: a box is kept when its score is at least this (the official 0.7)")
    generalized.add_argument("--grec_match", default="giou", choices=["giou", "iou"],
                             help="GREC: overlap boxes and targets are matched on, at >= 0.5: giou = what the official "
                                  "code computes, iou = what its name says")
    masks.add_argument("--no_mask_metrics", action="store_true",
                       help="skip the mask metrics even where the dataset has ground-truth masks")
    data = parser.add_argument_group("data (default: the checkpoint's)")
    data.add_argument("--dataset", help="dataset of --eval_set: a built-in one or a JSONL dataset's name [default: the "
                                        "checkpoint's]")
    data.add_argument("--data_root", help="image root")
    data.add_argument("--split_root", help="folder holding <dataset>/<dataset>_<split>.pth")
    data.add_argument("--index_cache",
                      help="folder for the splits' index files (default: beside the split files when writable, else "
                           "~/.cache/segvg/index; docs/data.md, \"The index cache\")")
    data.add_argument("--exif", choices=["apply", "ignore"],
                      help="EXIF orientation of a JSONL dataset's images: apply = its boxes refer to the image as "
                           "viewers show it, ignore = to the stored pixels [default: the checkpoint's, else apply]; "
                           "built-in datasets always read the stored pixels (docs/custom_data.md)")
    add_tokenizer_flags(data)
    run = parser.add_argument_group("run")
    run.add_argument("--batch_size", default=32, type=int,
                     help="expressions per process and forward pass (an image's expressions share one batch where "
                          "they fit: its CNN runs once)")
    run.add_argument("--num_workers", default=4, type=int, help="DataLoader worker processes per process")
    run.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda, cuda:N or cpu")
    add_process_group_flags(run)
    run.add_argument("--amp", default="off", choices=AMP_CHOICES, help="autocast precision")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (docs/performance.md)")
    run.add_argument("--tf32", action="store_true", help="TF32 matrix products on Ampere+ GPUs")
    add_backend_flags(run, cpu_only=True)
    run.add_argument("--plain_inference", action="store_true",
                     help="run the model as trained, without the fast path (BatchNorm folded into the "
                          "convolutions, channels-last CNN), whose outputs differ only by float rounding")
    return parser


def eval_targets(opts):
    """[(dataset or None for the checkpoint's, split)] from --eval_sets or --dataset / --eval_set."""
    if opts.eval_sets:
        if opts.eval_set is not None or opts.dataset is not None:
            raise ValueError("--eval_sets names each split's dataset (DATASET:SPLIT): drop --eval_set and --dataset")
        targets = []
        for item in (PAPER_SPLITS if opts.eval_sets == "paper" else opts.eval_sets).split(","):
            dataset, _, split = item.strip().rpartition(":")
            if not dataset or not split:
                raise ValueError(f"--eval_sets entry {item.strip()!r}: write DATASET:SPLIT, e.g. unc:testA")
            targets.append((dataset, split))
    else:
        targets = [(opts.dataset, split.strip()) for split in (opts.eval_set or "test").split(",")]
    repeated = {target for target in targets if targets.count(target) > 1}
    if repeated or any(not split for _, split in targets):
        raise ValueError(f"--eval_set/--eval_sets: empty or repeated splits in {opts.eval_sets or opts.eval_set!r}")
    return targets


def main(opts):
    """Evaluate; returns the summary of the split (Acc@0.5 as "accu", "accu@0.75", "miou", "count", per type on the
    demo), or with several splits {"dataset:split": summary}."""
    init_distributed_mode(opts)
    limit_opencv_threads()
    targets = eval_targets(opts)
    device = torch.device(opts.device)
    overrides = {key: getattr(opts, key) for key in DATA_FLAGS if getattr(opts, key) is not None}
    model, tokenizer, args, official = load_from_checkpoint(opts.checkpoint, overrides)
    if any(name is None for name, _ in targets) and len(dataset_names(args.dataset)) > 1:
        raise ValueError(f"{opts.checkpoint} was trained on several datasets ({args.dataset}): name the one to evaluate "
                         f"with --dataset NAME, or several with --eval_sets NAME:SPLIT,...")
    if opts.backend == "onnxruntime":
        model, device = OnnxRuntimeModel(opts.onnx), torch.device("cpu")
        model.check_matches(args, opts.checkpoint)
    else:
        model.to(device)
        if not opts.plain_inference:
            prepare_for_inference(model)
        if opts.tf32:
            set_tf32(True)
        if opts.compile:
            compile_model(model, device)
    output_dir = Path(opts.output_dir or Path(opts.checkpoint).parent)
    several = len(targets) > 1
    summary = {}
    for dataset_name, split in targets:
        split_args = copy.copy(args)
        split_args.dataset = dataset_name or args.dataset
        summary[f"{split_args.dataset}:{split}"] = evaluate_split(opts, model, tokenizer, split_args, official, device,
                                                                  split, output_dir, several)
    if not several:
        return next(iter(summary.values()))
    print(format_summary(summary))
    if is_main_process():
        report = {"checkpoint": str(opts.checkpoint), "backend": opts.backend, "splits": summary}
        atomic_write(output_dir / "eval_summary.json", lambda f: f.write(json.dumps(report, indent=1).encode()))
    return summary


def format_summary(summary):
    """One table of every split: Acc@0.5, Acc@0.75, mIoU, count and the model mask's mIoU where there is one; with
    splits of no-target or several-target phrases also GRES gIoU and N-acc / T-acc (Acc@0.5 then of one-target ones)."""
    generalized = any("by_kind" in stats for stats in summary.values())
    extra = " gIoU | N-acc | T-acc |" if generalized else ""
    lines = ["| dataset:split | Acc@0.5 | Acc@0.75 | mIoU | samples | mask mIoU |" + extra,
             "|---|---|---|---|---|---|" + "---|" * (3 if generalized else 0)]
    for name, stats in summary.items():
        mask = f"{stats['mask']['miou']:.4f}" if "mask" in stats else "-"
        row = (f"| {name} | {stats['accu']:.4f} | {stats['accu@0.75']:.4f} | {stats['miou']:.4f} | "
               f"{stats['count']} | {mask} |")
        if generalized:
            row += "".join(f" {stats[k]:.4f} |" if k in stats else " - |" for k in ("giou", "n_acc", "t_acc"))
        lines.append(row)
    return "\n".join(lines)


def evaluate_split(opts, model, tokenizer, args, official, device, split, output_dir, several):
    """One split: evaluate, print, write its eval_<dataset>_<split>.json (and what was asked for); -> its summary.
    With several splits, a split's masks, predictions and overlays get names of their own."""
    dataset = build_dataset(split, args, tokenizer)
    loader = build_eval_loader(dataset, opts.batch_size, opts.num_workers, pin_memory=device.type == "cuda")
    presence = presence_answer(opts, model, tokenizer, args, device, split, dataset)
    score = not opts.no_mask_metrics and dataset.has_masks()
    files_dir = output_dir / f"{args.dataset}_{split}" if several else output_dir
    scorer = None
    if score or opts.save_masks or opts.boxes_from_mask:
        scorer = MaskScorer(dataset, args, opts.mask_threshold, score, files_dir if opts.save_masks else None,
                            opts.save_probabilities, opts.mask_refine,
                            opts.min_component_area if opts.boxes_from_mask else None)
    start = time.time()
    results = evaluate(model, loader, device, opts.amp, desc=f"Eval {args.dataset} {split}", mask_scorer=scorer,
                       mask_presence_top=opts.mask_presence_top)
    if presence["threshold"] == "auto":  # chosen on this very split: its val
        presence.update(choose_on(results, dataset, presence["source"], f"{args.dataset}:{split}"))
    stats = summarize_results(results, dataset, generalized_options(opts, args, presence))
    cost = scorer.refine_cost() if scorer is not None else None
    if cost is not None:
        stats["mask_refine"] = cost
    backend = f", ONNX Runtime on {opts.onnx}" if opts.backend == "onnxruntime" else ""
    print(f"{args.dataset} {split} ({'official' if official else 'our'} checkpoint {opts.checkpoint}{backend}):")
    print(format_stats(stats))
    if cost is not None:
        print(f"mask refinement {cost['method']}: {cost['ms_per_expression']:.1f} ms per expression "
              f"({cost['count']} on this process)")
    print(f"Evaluation time {datetime.timedelta(seconds=int(time.time() - start))}")
    if is_main_process():
        predictions = opts.save_predictions
        if predictions and several:
            predictions = str(Path(predictions).with_name(f"{Path(predictions).stem}_{args.dataset}_{split}"
                                                          f"{Path(predictions).suffix or '.jsonl'}"))
        write_outputs(opts, args, split, model, dataset, results, stats, device, output_dir, files_dir, scorer,
                      predictions, presence)
    return stats


def generalized_options(opts, args, presence):
    """How summarize_results scores phrases of no target or several."""
    return {"args": args, "presence_from": presence["source"], "presence_threshold": presence["threshold"],
            "grec_score_threshold": opts.grec_score_threshold, "grec_match": opts.grec_match}


def presence_answer(opts, model, tokenizer, args, device, split, dataset):
    """{"source", "threshold", "chosen_on"} of the "not found" answer: the source asked for (or the head where the
    model has one), the threshold given, or with auto the one the checkpoint stores for that source, else one chosen
    on the dataset's val split now ("auto" left when that split is the one being evaluated: chosen on its results)."""
    source = presence_source(opts.presence_from, model)
    if source is None or opts.presence_threshold != "auto":
        return {"source": source, "threshold": opts.presence_threshold if source else 0.5, "chosen_on": None}
    stored = getattr(model, "presence_thresholds", {})
    if usable(stored, source, opts.mask_presence_top):
        chosen = float(stored[source]["threshold"])
        where = stored[source].get("split", "validation")
        print(f"presence threshold {chosen:.7g} for --presence_from {source}: the checkpoint's, chosen on {where}")
        return {"source": source, "threshold": chosen, "chosen_on": f"{where} (stored in the checkpoint)"}
    if split == "val":
        return {"source": source, "threshold": "auto", "chosen_on": None}
    val = build_dataset("val", args, tokenizer)
    loader = build_eval_loader(val, opts.batch_size, opts.num_workers, pin_memory=device.type == "cuda")
    results = evaluate(model, loader, device, opts.amp, desc=f"Val {args.dataset} (presence threshold)",
                       mask_presence_top=opts.mask_presence_top)
    return {"source": source, **choose_on(results, val, source, f"{args.dataset}:val")}


def choose_on(results, dataset, source, name):
    """The threshold maximising N-acc + T-acc of source's scores on engine.evaluate's results of dataset."""
    scores = [presence_scores(extra["present"], extra["mask_present"])[source] for *_, extra in results.values()]
    labels = [dataset.n_targets(index) > 0 for index in results]
    try:
        threshold, n_acc, t_acc = choose_threshold(scores, labels)
    except ValueError:
        raise ValueError(f"--presence_threshold auto: {name} has no phrase without a target to choose a threshold "
                         f"on; give a number") from None
    print(f"presence threshold {threshold:.7g} for --presence_from {source}, chosen now on {name} (N-acc {n_acc:.3f}, "
          f"T-acc {t_acc:.3f} there)")
    return {"threshold": threshold, "chosen_on": name}


def write_outputs(opts, args, split, model, dataset, results, stats, device, output_dir, files_dir, scorer,
                  predictions, presence):
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(opts.checkpoint), "backend": opts.backend, "onnx": opts.onnx, "dataset": args.dataset,
              "eval_set": split, "mask_threshold": opts.mask_threshold, **stats}
    if presence["chosen_on"]:
        report["presence_threshold_chosen_on"] = presence["chosen_on"]
    (output_dir / f"eval_{args.dataset}_{split}.json").write_text(json.dumps(report, indent=1))
    with (output_dir / "eval_log.txt").open("a") as f:
        f.write(json.dumps(report) + "\n")
    if not (predictions or opts.visualize > 0 or opts.save_masks):
        return
    records = evaluation_records(results, dataset, args, presence["threshold"], presence["source"])
    if opts.save_masks:
        for record in records:
            record["mask"] = str(scorer.mask_path(record["index"]))
            if opts.save_probabilities:
                record["probability"] = str(scorer.mask_path(record["index"], "probabilities"))
            if opts.mask_refine != "none":
                record[f"{opts.mask_refine}_mask"] = str(scorer.mask_path(record["index"], f"masks_{opts.mask_refine}"))
    if predictions:
        write_jsonl(predictions, records)
        print(f"{len(records)} prediction records written to {predictions}")
    if opts.visualize > 0:
        folder = files_dir / "visualize"
        paths = write_dataset_overlays(model, dataset, worst_and_best(records, opts.visualize), folder, args, device)
        print(f"{len(paths)} overlays (worst and best IoU) written to {folder}")


if __name__ == "__main__":
    code = 0
    try:
        main(get_args_parser().parse_args())
    except (CheckpointError, FileWriteError, FileNotFoundError, ValueError) as err:
        if is_main_process():
            sys.stderr.write(f"error: {err}\n")
        code = 1
    finally:
        destroy_process_group()
    sys.exit(code)
