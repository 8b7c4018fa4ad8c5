"""Ground phrases in images with a SegVG checkpoint (ours or an official one).

    python predict.py --checkpoint outputs/demo/best_checkpoint.pth --image photo.jpg --phrase "the red circle" \
        [--phrase "another phrase" ...] [--out vis.png] [--json]
    python predict.py --checkpoint CKPT --pairs pairs.jsonl --output_dir preds --visualize 8

The library behind it: models.predictor.SegVGPredictor.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

from models.predictor import SegVGPredictor, load_rgb
from utils.checkpoint import CheckpointError
from utils.predictions import prediction_record, read_pairs, write_records
from utils.visualize import draw_overlay


def get_args_parser():
    parser = argparse.ArgumentParser(prog="predict.py", description="Ground phrases in images with a SegVG checkpoint.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or an official SegVG one")
    parser.add_argument("--image", help="image file (with one or more --phrase)")
    parser.add_argument("--phrase", "--text", dest="phrases", action="append", default=[],
                        help="referring expression; repeat for several")
    parser.add_argument("--pairs", help="JSONL file of {\"image\": path, \"phrase\": text} lines")
    parser.add_argument("--out", help="overlay PNG (several predictions: vis.png -> vis_0.png, vis_1.png, ...)")
    parser.add_argument("--output_dir", help="folder for predictions.jsonl (prediction records) and overlays/")
    parser.add_argument("--visualize", type=int, default=0,
                        help="with --output_dir: overlays of the first N predictions in <output_dir>/overlays")
    parser.add_argument("--json", action="store_true", help="print one prediction record (JSON) per line")
    parser.add_argument("--batch_size", type=int, default=16, help="pairs per forward pass")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda, cuda:N or cpu")
    parser.add_argument("--bert_model", help="tokenizer of an official checkpoint: hub name or local BERT folder "
                                             "(default: the shipped bert-base-uncased vocabulary)")
    parser.add_argument("--vocab_file", help="WordPiece vocab.txt overriding the checkpoint's")
    parser.add_argument("--plain_inference", action="store_true",
                        help="run the model as trained (no BatchNorm folding, no channels-last CNN)")
    return parser


def overlay_paths(out, count):
    """--out vis.png: vis.png for one prediction, vis_0.png, vis_1.png, ... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{k}{out.suffix or '.png'}") for k in range(count)]


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.pairs:
        if opts.image or opts.phrases:
            raise ValueError("give either --pairs or --image with --phrase, not both")
        pairs = read_pairs(opts.pairs)
    elif opts.image and opts.phrases:
        pairs = [(opts.image, phrase) for phrase in opts.phrases]
    else:
        raise ValueError("give --image and at least one --phrase, or --pairs FILE.jsonl")
    warnings.simplefilter("always")
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    predictor = SegVGPredictor.from_checkpoint(opts.checkpoint, opts.device, opts.bert_model, opts.vocab_file,
                                               fast=not opts.plain_inference)
    results = []
    for start in range(0, len(pairs), opts.batch_size):
        chunk = pairs[start:start + opts.batch_size]
        results += predictor.predict([image for image, _ in chunk], [phrase for _, phrase in chunk])

    overlays = {}
    if opts.out:
        overlays = dict(enumerate(overlay_paths(opts.out, len(results))))
    if opts.output_dir and opts.visualize > 0:
        overlays.update({k: Path(opts.output_dir) / "overlays" / f"{k:04d}.png"
                         for k in range(min(opts.visualize, len(results)))})
    records = []
    for k, ((image, _), result) in enumerate(zip(pairs, results)):
        extra = {"image_size": result["image_size"]}
        if k in overlays:
            overlays[k].parent.mkdir(parents=True, exist_ok=True)
            draw_overlay(load_rgb(image), result["box"], result["mask"], result["phrase"], result["score"]).save(
                overlays[k])
            extra["overlay"] = str(overlays[k])
        record = prediction_record(image, result["phrase"], result["box"], result["score"], **extra)
        records.append(record)
        if opts.json:
            print(json.dumps(record))
        else:
            box = ", ".join(f"{v:.1f}" for v in record["box"])
            print(f"{image}: \"{record['phrase']}\" -> box [{box}] score {record['score']:.3f}"
                  + (f" (overlay {overlays[k]})" if k in overlays else ""))
    if opts.output_dir:
        write_records(records, Path(opts.output_dir) / "predictions.jsonl")
        print(f"{len(records)} prediction records written to {Path(opts.output_dir) / 'predictions.jsonl'}",
              file=sys.stderr)
    return results


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
