"""Evaluate a SegVG checkpoint (ours or an official one) on one split: Acc@0.5, Acc@0.75 and mean IoU.

    python eval.py --eval_model outputs/best_checkpoint.pth --eval_set test
    torchrun --nproc_per_node 4 eval.py --eval_model SegVG_gref_umd.pth --dataset gref_umd --eval_set test \
        --data_root ... --split_root ... --bert_model bert-base-uncased

The model configuration comes from the checkpoint (our `args`, or the official file's argparse Namespace merged
over the defaults); flags given on the command line override it.
"""
import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.ops import box_convert

import utils.misc as utils
from datasets import build_dataset, build_tokenizer, collate_fn
from datasets.grounding import read_rgb
from datasets.transforms import canvas_map_to_image, canvas_to_image, eval_placement
from engine import evaluate, format_stats, summarize_results, to_device
from models import build_model
from models.inference import prepare_for_inference
from train import get_args_parser as get_train_args_parser
from utils.checkpoint import (CheckpointError, is_official_state_dict, load_official_checkpoint,
                              load_state_dict_checked, safe_load)
from utils.eval_utils import canvas_probabilities
from utils.samplers import ShardSampler
from utils.visualize import draw_overlay

# Settings of the run that evaluates, never taken from the checkpoint.
RUN_KEYS = {"output_dir", "device", "batch_size", "num_workers", "resume", "dist_url", "tensorboard", "seed",
            "amp", "deterministic", "eval_set", "eval_model", "rank", "world_size", "gpu", "distributed",
            "channels_last", "checkpoint_activations", "compile", "tf32"}
# An official checkpoint's paths are its authors' machine; its data flags are not ours either.
OFFICIAL_SKIP = RUN_KEYS | {"data_root", "split_root", "detr_model", "bert_model", "vocab_file"}


def get_args_parser():
    parser = argparse.ArgumentParser("SegVG evaluation", parents=[get_train_args_parser()])
    parser.set_defaults(batch_size=32)
    parser.add_argument("--eval_model", required=True, help="checkpoint to evaluate (ours or an official one)")
    parser.add_argument("--eval_set", default="test", help="split to evaluate: val, test, testA, testB, ...")
    parser.add_argument("--save_predictions", default="",
                        help="JSONL file: per sample image, phrase, GT and predicted box (image pixels), IoU, "
                             "confidence")
    parser.add_argument("--visualize", default=0, type=int,
                        help="write N overlays (the worst and the best IoU halves) to <output_dir>/visualize")
    parser.add_argument("--plain_inference", action="store_true",
                        help="run the model as trained, without the fast path (BatchNorm folded into the "
                             "convolutions, channels-last CNN), whose outputs differ only by float rounding")
    return parser


def explicit_flags(parser, argv):
    """Names of the options actually given in argv (argparse fills defaults only for absent attributes)."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace=namespace)
    return {k for k, v in vars(namespace).items() if v is not unset}


def resolve_config(args, explicit, checkpoint):
    """Defaults <- the checkpoint's configuration <- flags given on the command line. Returns (args, official)."""
    state_dict = checkpoint.get("model", checkpoint)
    official = is_official_state_dict(state_dict)
    saved = checkpoint.get("args", {})
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else dict(saved)
    skip = OFFICIAL_SKIP if official else RUN_KEYS
    for key, value in saved.items():
        if hasattr(args, key) and key not in skip and key not in explicit:
            setattr(args, key, value)
    # The weights come from the checkpoint: build BERT's structure only, with no download.
    args.bert_init = "random"
    return args, official


def tokenizer_from_checkpoint(checkpoint, args, explicit=()):
    """Our checkpoints carry their vocabulary (unless --vocab_file is given); official ones use --vocab_file or
    --bert_model's."""
    info = checkpoint.get("tokenizer")
    if not info or "vocab_file" in explicit:
        return build_tokenizer(args)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.txt"
        vocab_file.write_text("\n".join(info["vocab"]) + "\n")
        return build_tokenizer(argparse.Namespace(**{**vars(args), "vocab_file": str(vocab_file)}))


def load_model(args, checkpoint, official):
    model = build_model(args)
    if official:
        load_official_checkpoint(model, checkpoint)
    else:
        load_state_dict_checked(model, checkpoint["model"], f"checkpoint {args.eval_model}")
    return model


def prediction_records(results, dataset, args):
    """Per-sample records in the original images' pixels, ordered by dataset index."""
    placements = {}
    records = []
    for index in sorted(results):
        iou, box, confidence = results[index]
        info = dataset.sample_info(index)
        with Image.open(info["image"]) as image:
            size = image.size
        if size not in placements:
            placements[size] = eval_placement(*size, args)
        canvas_box = box_convert(torch.tensor([box]), "cxcywh", "xyxy").clamp(0, 1) * args.imsize
        pred = canvas_to_image(canvas_box, placements[size], size)[0]
        record = {"index": index, "image": info["image"], "phrase": info["phrase"],
                  "gt_box": [round(v, 2) for v in info["box"]], "pred_box": [round(v, 2) for v in pred.tolist()],
                  "iou": round(iou, 4), "confidence": round(confidence, 4)}
        if "expr_type" in info:
            record["expr_type"] = info["expr_type"]
        records.append(record)
    return records


@torch.inference_mode()
def write_overlays(model, dataset, records, count, folder, args, device):
    """Overlays of the count // 2 worst and the rest best predictions (by IoU), masks included."""
    ranked = sorted(records, key=lambda r: r["iou"])
    chosen = ranked[:count // 2] + ranked[len(ranked) - (count - count // 2):] if count < len(ranked) else ranked
    batch = to_device(collate_fn([dataset[r["index"]] for r in chosen]), device)
    model.eval()
    seg = model(batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"], aux=False)["seg_logits"]
    prob = canvas_probabilities(seg.cpu(), args.imsize)
    folder.mkdir(parents=True, exist_ok=True)
    for k, record in enumerate(chosen):
        image = read_rgb(record["image"])
        size = (image.shape[1], image.shape[0])
        mask = canvas_map_to_image(prob[k], eval_placement(*size, args), size).numpy()
        name = f"{'worst' if k < count // 2 else 'best'}_{k:02d}_{record['index']}.png"
        draw_overlay(image, record["pred_box"], mask, record["phrase"], record["confidence"], record["gt_box"],
                     record["iou"]).save(folder / name)
    return len(chosen)


def main(args, explicit=()):
    """explicit: names of the flags given on the command line; they win over the checkpoint's configuration."""
    utils.init_distributed_mode(args)
    utils.limit_opencv_threads()
    device = torch.device(args.device)
    checkpoint = safe_load(args.eval_model)
    args, official = resolve_config(args, explicit, checkpoint)
    tokenizer = tokenizer_from_checkpoint(checkpoint, args, explicit)
    model = load_model(args, checkpoint, official).to(device)
    if not args.plain_inference:
        prepare_for_inference(model)
    if args.tf32:
        utils.enable_tf32()
    if args.compile:
        utils.compile_model(model, device)
    del checkpoint

    dataset = build_dataset(args.eval_set, args, tokenizer)
    loader = DataLoader(dataset, batch_size=args.batch_size,
                        sampler=ShardSampler(len(dataset), utils.get_rank(), utils.get_world_size()),
                        collate_fn=collate_fn, num_workers=args.num_workers, pin_memory=device.type == "cuda")
    start = time.time()
    results = evaluate(model, loader, device, args, desc=f"Eval {args.eval_set}")
    stats = summarize_results(results, dataset)
    print(f"{args.dataset} {args.eval_set} ({'official' if official else 'our'} checkpoint {args.eval_model}):")
    print(format_stats(stats))
    print(f"Evaluation time {datetime.timedelta(seconds=int(time.time() - start))}")
    if utils.is_main_process():
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        report = {"eval_model": str(args.eval_model), "dataset": args.dataset, "eval_set": args.eval_set, **stats}
        (output_dir / f"eval_{args.dataset}_{args.eval_set}.json").write_text(json.dumps(report, indent=1))
        with (output_dir / "eval_log.txt").open("a") as f:
            f.write(json.dumps(report) + "\n")
        if args.save_predictions or args.visualize > 0:
            records = prediction_records(results, dataset, args)
            if args.save_predictions:
                Path(args.save_predictions).parent.mkdir(parents=True, exist_ok=True)
                Path(args.save_predictions).write_text("".join(json.dumps(r) + "\n" for r in records))
                print(f"{len(records)} predictions written to {args.save_predictions}")
            if args.visualize > 0:
                folder = output_dir / "visualize"
                written = write_overlays(model, dataset, records, args.visualize, folder, args, device)
                print(f"{written} overlays (worst and best IoU) written to {folder}")
    return stats


if __name__ == "__main__":
    parser = get_args_parser()
    args = parser.parse_args()
    code = 0
    try:
        main(args, explicit_flags(parser, sys.argv[1:]))
    except (CheckpointError, FileNotFoundError) as err:
        if utils.is_main_process():
            sys.stderr.write(f"error: {err}\n")
        code = 1
    finally:
        if utils.is_dist_avail_and_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(code)
