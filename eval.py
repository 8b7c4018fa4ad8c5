"""Evaluate a SegVG checkpoint (ours or an official one) on one split: Acc@0.5, Acc@0.75 and mean IoU, and the masks'
mIoU, oIoU and Prec@0.5:0.9 where the dataset has ground-truth masks.

    python eval.py --checkpoint outputs/demo/best_checkpoint.pth --eval_set test
    torchrun --nproc_per_node 4 eval.py --checkpoint ckpt/gref_umd/best_checkpoint.pth --eval_set test \
        --data_root data/images --split_root data/split

The model configuration and the tokenizer come from the checkpoint; the data flags below override its data paths.
"""
import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from datasets import build_dataset, collate_fn
from datasets.files import FileWriteError
from datasets.records import write_jsonl
from datasets.samplers import ShardSampler
from engine import evaluate, format_stats, summarize_results
from inference.fast_path import prepare_for_inference
from inference.loading import load_from_checkpoint
from inference.onnx_runtime import OnnxRuntimeModel
from utils.checkpoint import CheckpointError
from utils.distributed import destroy_process_group, get_rank, get_world_size, init_distributed_mode, is_main_process
from utils.eval_utils import MASK_THRESHOLD
from utils.mask_metrics import MaskScorer
from utils.options import AMP_CHOICES, add_backend_flags, add_mask_refine_flag, add_tokenizer_flags
from utils.predictions import evaluation_records, worst_and_best
from utils.runtime import compile_model, limit_opencv_threads, set_tf32
from utils.visualize import write_dataset_overlays

# Flags that override the checkpoint's configuration when given.
DATA_FLAGS = ("dataset", "data_root", "split_root", "bert_model", "vocab_file")


def get_args_parser():
    parser = argparse.ArgumentParser(prog="eval.py", description="Evaluate a SegVG checkpoint on one split.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", "--eval_model", dest="checkpoint", required=True,
                        help="checkpoint to evaluate, ours or an official one (--eval_model is the original's name)")
    parser.add_argument("--eval_set", default="test", help="split to evaluate: val, test, testA, testB, ...")
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
    masks.add_argument("--no_mask_metrics", action="store_true",
                       help="skip the mask metrics even where the dataset has ground-truth masks")
    data = parser.add_argument_group("data (default: the checkpoint's)")
    data.add_argument("--dataset", help="dataset of --eval_set: a built-in one or a JSONL dataset's name")
    data.add_argument("--data_root", help="image root")
    data.add_argument("--split_root", help="folder holding <dataset>/<dataset>_<split>.pth")
    add_tokenizer_flags(data)
    run = parser.add_argument_group("run")
    run.add_argument("--batch_size", default=32, type=int, help="samples per process and forward pass")
    run.add_argument("--num_workers", default=4, type=int, help="DataLoader worker processes per process")
    run.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda, cuda:N or cpu")
    run.add_argument("--dist_url", default="env://", help="init_method of the process group under torchrun")
    run.add_argument("--amp", default="off", choices=AMP_CHOICES, help="autocast precision")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (docs/performance.md)")
    run.add_argument("--tf32", action="store_true", help="TF32 matrix products on Ampere+ GPUs")
    add_backend_flags(run, cpu_only=True)
    run.add_argument("--plain_inference", action="store_true",
                     help="run the model as trained, without the fast path (BatchNorm folded into the "
                          "convolutions, channels-last CNN), whose outputs differ only by float rounding")
    return parser


def main(opts):
    """Evaluate; returns the summary (Acc@0.5 as "accu", "accu@0.75", "miou", "count", per type on the demo)."""
    init_distributed_mode(opts)
    limit_opencv_threads()
    device = torch.device(opts.device)
    overrides = {key: getattr(opts, key) for key in DATA_FLAGS if getattr(opts, key) is not None}
    model, tokenizer, args, official = load_from_checkpoint(opts.checkpoint, overrides)
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

    dataset = build_dataset(opts.eval_set, args, tokenizer)
    loader = DataLoader(dataset, batch_size=opts.batch_size, sampler=ShardSampler(len(dataset), get_rank(),
                                                                                   get_world_size()),
                        collate_fn=collate_fn, num_workers=opts.num_workers, pin_memory=device.type == "cuda")
    output_dir = Path(opts.output_dir or Path(opts.checkpoint).parent)
    score = not opts.no_mask_metrics and dataset.has_masks()
    scorer = None
    if score or opts.save_masks:
        scorer = MaskScorer(dataset, args, opts.mask_threshold, score, output_dir if opts.save_masks else None,
                            opts.save_probabilities, opts.mask_refine)
    start = time.time()
    results = evaluate(model, loader, device, opts.amp, desc=f"Eval {opts.eval_set}", mask_scorer=scorer)
    stats = summarize_results(results, dataset)
    cost = scorer.refine_cost() if scorer is not None else None
    if cost is not None:
        stats["mask_refine"] = cost
    backend = f", ONNX Runtime on {opts.onnx}" if opts.backend == "onnxruntime" else ""
    print(f"{args.dataset} {opts.eval_set} ({'official' if official else 'our'} checkpoint {opts.checkpoint}{backend}):")
    print(format_stats(stats))
    if cost is not None:
        print(f"mask refinement {cost['method']}: {cost['ms_per_expression']:.1f} ms per expression "
              f"({cost['count']} on this process)")
    print(f"Evaluation time {datetime.timedelta(seconds=int(time.time() - start))}")
    if is_main_process():
        write_outputs(opts, args, model, dataset, results, stats, device, output_dir, scorer)
    return stats


def write_outputs(opts, args, model, dataset, results, stats, device, output_dir, scorer):
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(opts.checkpoint), "backend": opts.backend, "onnx": opts.onnx, "dataset": args.dataset,
              "eval_set": opts.eval_set, "mask_threshold": opts.mask_threshold, **stats}
    (output_dir / f"eval_{args.dataset}_{opts.eval_set}.json").write_text(json.dumps(report, indent=1))
    with (output_dir / "eval_log.txt").open("a") as f:
        f.write(json.dumps(report) + "\n")
    if not (opts.save_predictions or opts.visualize > 0 or opts.save_masks):
        return
    records = evaluation_records(results, dataset, args)
    if opts.save_masks:
        for record in records:
            record["mask"] = str(scorer.mask_path(record["index"]))
            if opts.save_probabilities:
                record["probability"] = str(scorer.mask_path(record["index"], "probabilities"))
            if opts.mask_refine != "none":
                record[f"{opts.mask_refine}_mask"] = str(scorer.mask_path(record["index"], f"masks_{opts.mask_refine}"))
    if opts.save_predictions:
        write_jsonl(opts.save_predictions, records)
        print(f"{len(records)} prediction records written to {opts.save_predictions}")
    if opts.visualize > 0:
        folder = output_dir / "visualize"
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
