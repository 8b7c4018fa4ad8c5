"""Ground phrases in images with a SegVG checkpoint (ours or an official one).

    python predict.py --checkpoint outputs/demo/best_checkpoint.pth --image photo.jpg --phrase "the red circle" \
        [--phrase "another phrase" ...] [--out vis.png] [--json]
    python predict.py --checkpoint CKPT --images photos/ --phrase "the dog" --output_dir preds --save_masks
    python predict.py --checkpoint CKPT --pairs pairs.jsonl --output_dir preds --visualize 8
    torchrun --nproc_per_node 4 predict.py --checkpoint CKPT --images photos/ --phrase "the dog" --output_dir preds \
        [--auto_resume]

The library behind it: inference.predictor.SegVGPredictor; with --output_dir, inference.prediction_run (the inputs
sharded by image over the processes, records appended per batch, an interrupted run continued with --auto_resume).
"""
import argparse
import glob
import json
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from datasets.images import add_image_flags
from datasets.samplers import ImageBatchSampler
from evaluation.mask_refine import add_mask_refine_flag
from evaluation.predictions import read_pairs
from evaluation.presence import add_answer_flags, score_and_threshold
from evaluation.segmentation_map import MASK_THRESHOLD
from inference import SegVGPredictor
from inference.prediction_run import PredictionRun, predict_batches, save_prediction
from models.checkpoint import CheckpointError
from utils.distributed import destroy_process_group, init_distributed_mode, is_main_process
from utils.files import FileWriteError
from utils.options import add_backend_flags, add_exif_flag, add_process_group_flags, add_tokenizer_flags
from utils.runtime import keep_freed_memory

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def get_args_parser():
    parser = argparse.ArgumentParser(prog="predict.py", description="Ground phrases in images with a SegVG checkpoint.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint",
                        help="our checkpoint or an official SegVG one: a .pth file, a folder in the Hub's layout or a "
                             "Hub id ORG/NAME[@revision] (with --backend onnxruntime: optional, the configuration and "
                             "tokenizer to use)")
    inputs = parser.add_argument_group("inputs (one of --image, --images or --pairs)")
    inputs.add_argument("--image", help="image file (with one or more --phrase)")
    inputs.add_argument("--images", help="a folder or a glob pattern of images: each is grounded with every --phrase")
    inputs.add_argument("--phrase", "--text", dest="phrases", action="append", default=[],
                        help="referring expression; repeat for several")
    inputs.add_argument("--pairs", help="JSONL file of {\"image\": path, \"phrase\": text} lines")
    add_exif_flag(inputs)
    add_image_flags(inputs)
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out", help="overlay PNG (several predictions: vis.png -> vis_0.png, vis_1.png, ...)")
    outputs.add_argument("--output_dir", help="folder for predictions.jsonl (prediction records), masks/ and overlays/")
    outputs.add_argument("--save_masks", action="store_true",
                         help="with --output_dir: a binary PNG per prediction, at its image's size, in "
                              "<output_dir>/masks (the record's \"mask\" names it)")
    outputs.add_argument("--mask_threshold", type=float, default=MASK_THRESHOLD,
                         help="probability above which a pixel belongs to a saved mask (docs/evaluation.md)")
    outputs.add_argument("--save_probabilities", action="store_true",
                         help="with --save_masks: also the probability map (0-255 PNG) in <output_dir>/probabilities")
    add_mask_refine_flag(outputs)
    outputs.add_argument("--visualize", type=int, default=0,
                         help="with --output_dir: overlays of the first N predictions in <output_dir>/overlays")
    outputs.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    outputs.add_argument("--auto_resume", action="store_true",
                         help="continue the interrupted run in --output_dir: the inputs it has written are not "
                              "predicted again")
    outputs.add_argument("--json", action="store_true", help="print one prediction record (JSON) per line")
    add_answer_flags(outputs)
    run = parser.add_argument_group("run")
    run.add_argument("--batch_size", type=int, default=16,
                     help="pairs per forward pass (an image's phrases share one where they fit: its CNN runs once)")
    run.add_argument("--device", default="auto",
                     help="auto (cuda if available, else cpu), cuda, cuda:N or cpu (under torchrun: each process's GPU)")
    add_process_group_flags(run)
    run.add_argument("--shard", default="", metavar="K/N",
                     help="with --output_dir, outside torchrun: predict shard K of N (0-based; one task of a SLURM "
                          "array) and leave the merge to the same command without --shard (docs/evaluation.md)")
    add_tokenizer_flags(run)
    run.add_argument("--plain_inference", action="store_true",
                     help="run the model as trained (no BatchNorm folding, no channels-last CNN)")
    add_backend_flags(run)
    return parser


def image_files(pattern):
    """The images of a folder (sorted), or the files a glob pattern matches."""
    folder = Path(pattern)
    files = sorted(folder.iterdir()) if folder.is_dir() else sorted(Path(p) for p in glob.glob(pattern))
    files = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"no image ({', '.join(sorted(IMAGE_SUFFIXES))}) in {pattern}")
    return [str(f) for f in files]


def read_inputs(opts):
    """[(image, phrase)] from --pairs, --images or --image with the --phrase list."""
    chosen = [name for name in ("image", "images", "pairs") if getattr(opts, name)]
    if len(chosen) != 1:
        raise ValueError("give one of --image, --images (each with --phrase) or --pairs FILE.jsonl")
    if opts.pairs:
        if opts.phrases:
            raise ValueError("--pairs files carry their phrases: drop --phrase")
        return read_pairs(opts.pairs)
    if not opts.phrases:
        raise ValueError(f"give at least one --phrase to ground in --{chosen[0]}")
    images = [opts.image] if opts.image else image_files(opts.images)
    return [(image, phrase) for image in images for phrase in opts.phrases]


def overlay_paths(out, count):
    """--out vis.png: vis.png for one prediction, vis_0.png, vis_1.png, ... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{k}{out.suffix or '.png'}") for k in range(count)]


def check_outputs(opts):
    if not opts.output_dir or opts.overwrite or opts.auto_resume:
        return
    names = ["predictions.jsonl", "parts", "masks", "probabilities", "overlays"]
    if opts.mask_refine != "none":
        names.append(f"masks_{opts.mask_refine}")
    taken = [Path(opts.output_dir) / name for name in names]
    taken = [str(p) for p in taken if p.exists()]
    if taken:
        raise ValueError(f"{', '.join(taken)} already exist: give another --output_dir, --auto_resume to continue "
                         f"that run, or --overwrite")


def build_predictor(opts):
    options = {"mask_threshold": opts.mask_threshold, "mask_refine": opts.mask_refine, "exif": opts.exif,
               "max_image_pixels": opts.max_image_pixels, "reduced_decode": not opts.full_decode,
               "presence_threshold": opts.presence_threshold, "boxes_from_mask": opts.boxes_from_mask,
               "min_component_area": opts.min_component_area, "presence_from": opts.presence_from,
               "mask_presence_top": opts.mask_presence_top}
    if opts.backend == "onnxruntime":
        return SegVGPredictor.from_onnx(opts.onnx, opts.checkpoint, opts.device, opts.bert_model, opts.vocab_file,
                                        **options)
    return SegVGPredictor.from_checkpoint(opts.checkpoint, opts.device, opts.bert_model, opts.vocab_file,
                                          fast=not opts.plain_inference, **options)


def save(opts, pairs, k, rgb, result, overlays):
    return save_prediction(pairs, k, rgb, result, opts.output_dir, opts.save_masks, opts.save_probabilities,
                           opts.mask_refine, overlays.get(k))


def overlay_targets(opts, count):
    overlays = dict(enumerate(overlay_paths(opts.out, count))) if opts.out else {}
    if opts.output_dir:
        folder = Path(opts.output_dir) / "overlays"
        overlays.update({k: folder / f"{k:04d}.png" for k in range(min(opts.visualize, count))})
    return overlays


def parse_shard(text):
    """--shard "K/N" -> (K, N); "" -> None."""
    if not text:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        k = n = -1
    if not 0 <= k < n:
        raise ValueError(f"--shard {text!r}: give K/N with 0 <= K < N, e.g. --shard 0/4")
    return k, n


def predict_to_screen(opts, predictor, pairs):
    """No --output_dir: records printed in input order (--json: as JSON lines). -> the results."""
    overlays = overlay_targets(opts, len(pairs))
    batches = list(ImageBatchSampler([str(image) for image, _ in pairs], opts.batch_size))
    done = {}
    for k, rgb, result in predict_batches(predictor, pairs, batches):
        if rgb is not None:
            done[k] = (result, save(opts, pairs, k, rgb, result, overlays))
    for k in sorted(done):
        result, record = done[k]
        if opts.json:
            print(json.dumps(record))
        else:
            box = ", ".join(f"{v:.1f}" for v in record["box"])
            answer = f"box [{box}] score {record['score']:.3f}"
            if record.get("found") is False:
                answer = "not found (presence {}, below {})".format(
                    *score_and_threshold(record["present"], predictor.presence_threshold))
            elif "present" in record:
                answer += f" presence {record['present']:.6g}"
            if "boxes" in record and record.get("found", True):
                answer += f", {len(record['boxes'])} box(es) from the mask"
            print(f"{record['image']}: \"{record['phrase']}\" -> {answer}"
                  + (f" (overlay {overlays[k]})" if k in overlays else ""))
    return [done[k][0] for k in sorted(done)]


def predict_to_folder(opts, predictor, pairs):
    """--output_dir: this process's share, appended batch by batch, then merged (inference.prediction_run).
    -> the merged records (on rank 0)."""
    run = PredictionRun(opts.output_dir, len(pairs), parse_shard(opts.shard))
    if run.existing() and opts.overwrite:
        run.clear()
    done = run.open()
    if done:
        print(f"--auto_resume: {len(done)} of {len(pairs)} inputs already done in {opts.output_dir}, "
              f"{len(pairs) - len(done)} to go", file=sys.stderr)
    batches = run.batches(pairs, done, opts.batch_size)
    overlays = overlay_targets(opts, len(pairs))
    images = len({str(pairs[k][0]) for batch in batches for k in batch})
    with tqdm(total=images, desc="Predict", unit="image", disable=not is_main_process() or len(batches) <= 1,
              dynamic_ncols=True, mininterval=1.0) as progress:
        for batch in batches:  # a batch's masks first, then its records: a record never names a missing file
            entries = []
            for k, rgb, result in predict_batches(predictor, pairs, [batch], progress):
                if rgb is None:
                    entries.append({"index": k, "image": str(pairs[k][0]), "phrase": pairs[k][1], "skipped": result})
                else:
                    entries.append({**save(opts, pairs, k, rgb, result, overlays), "index": k})
            run.append(entries)
    records, skipped = run.finish()
    if run.shard is not None:
        print(f"shard {opts.shard} done; once every shard is, the same command without --shard (with --auto_resume) "
              f"writes {Path(opts.output_dir) / 'predictions.jsonl'}", file=sys.stderr)
    elif is_main_process():
        print(f"{len(records)} prediction records written to {Path(opts.output_dir) / 'predictions.jsonl'}"
              + (f" ({len(skipped)} pairs skipped)" if skipped else ""), file=sys.stderr)
    return records


def main(argv=None):
    parser = get_args_parser()
    opts = parser.parse_args(argv)
    if opts.backend == "onnxruntime" and not opts.onnx:
        parser.error("--backend onnxruntime needs --onnx FILE (tools/export_onnx.py writes one)")
    if opts.backend == "pytorch" and (opts.onnx or not opts.checkpoint):
        parser.error("give --checkpoint CKPT" if not opts.onnx else "--onnx needs --backend onnxruntime")
    if opts.auto_resume and not opts.output_dir:
        parser.error("--auto_resume continues the run in --output_dir: give it")
    pairs = read_inputs(opts)
    init_distributed_mode(opts)
    if opts.distributed and not opts.output_dir:
        raise ValueError("predict.py under torchrun writes its records to --output_dir: give one")
    if opts.shard and (opts.distributed or not opts.output_dir):
        raise ValueError("--shard K/N is for separate processes outside torchrun, each with the same --output_dir")
    parse_shard(opts.shard)
    check_outputs(opts)
    warnings.simplefilter("always")
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    predictor = build_predictor(opts)
    if predictor.device.type == "cpu" and (allocator := keep_freed_memory()):
        print(allocator, file=sys.stderr)
    if opts.output_dir:
        return predict_to_folder(opts, predictor, pairs)
    return predict_to_screen(opts, predictor, pairs)


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, FileWriteError, FileNotFoundError, ValueError) as err:  # OnnxModelError is a ValueError
        sys.exit(f"error: {err}")
    finally:
        destroy_process_group()
