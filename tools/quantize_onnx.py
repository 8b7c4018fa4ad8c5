"""Quantise an ONNX export of SegVG to int8 for CPU inference with ONNX Runtime (docs/onnx.md).

    python tools/quantize_onnx.py --onnx segvg.onnx --checkpoint outputs/demo/best_checkpoint.pth --out segvg.int8.onnx

Static (default): the convolutions and matrix products in int8, activation ranges calibrated on --calibration_samples
samples of --calibration_split (the eval transform, no augmentation). Dynamic: the matrix products only, no data.
The result is read like any export (--backend onnxruntime --onnx segvg.int8.onnx); its accuracy is eval.py's to say.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import build_dataset
from inference.onnx_quantize import (box_agreement, quantize_dynamic_int8, quantize_static_int8, sample_feeds,
                                     spread_indices)
from inference.onnx_runtime import OnnxModelError, OnnxRuntimeModel
from models.checkpoint import CheckpointError, tokenizer_overrides
from models.pretrained import load_from_checkpoint
from utils.files import FileWriteError
from utils.options import add_tokenizer_flags


def get_args_parser():
    parser = argparse.ArgumentParser(prog="tools/quantize_onnx.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--onnx", required=True, help="the float export (tools/export_onnx.py)")
    parser.add_argument("--checkpoint", required=True,
                        help="the checkpoint it was exported from: its data configuration and tokenizer")
    parser.add_argument("--out", required=True, help="the int8 .onnx file to write")
    parser.add_argument("--method", default="static", choices=["static", "dynamic"],
                        help="static: convolutions and matrix products, calibrated on data; dynamic: matrix products "
                             "only, no data")
    data = parser.add_argument_group("calibration data (static; default: the checkpoint's)")
    data.add_argument("--calibration_split", default="train", help="split whose samples calibrate the ranges")
    data.add_argument("--calibration_samples", default=256, type=int,
                      help="samples, spread evenly over the split")
    data.add_argument("--check_samples", default=32, type=int,
                      help="other samples of the split on which the int8 boxes are compared with the float ones "
                           "(0: no comparison)")
    data.add_argument("--dataset", help="dataset of the calibration split: a built-in one or a JSONL dataset's name")
    data.add_argument("--data_root", help="image root")
    data.add_argument("--split_root", help="folder holding <dataset>/<dataset>_<split>.pth")
    add_tokenizer_flags(data)
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.calibration_samples < 1 or opts.check_samples < 0:
        raise ValueError("--calibration_samples must be at least 1 and --check_samples at least 0")
    float_model = OnnxRuntimeModel(opts.onnx)  # a foreign or corrupt file fails here, before any work
    if float_model.quantization:
        raise ValueError(f"{opts.onnx} is already quantised ({float_model.quantization}): pass the float export")
    overrides = {key: getattr(opts, key) for key in ("dataset", "data_root", "split_root")
                 if getattr(opts, key) is not None}
    overrides.update(tokenizer_overrides(opts.bert_model, opts.vocab_file))
    _, tokenizer, args, _ = load_from_checkpoint(opts.checkpoint, overrides)
    float_model.check_matches(args, opts.checkpoint)
    dataset, calibration = None, []
    if opts.method == "static" or opts.check_samples:
        dataset = build_dataset(opts.calibration_split, args, tokenizer, augment=False)
    start = time.perf_counter()
    if opts.method == "static":
        calibration = spread_indices(len(dataset), opts.calibration_samples)
        if not calibration:
            raise ValueError(f"{args.dataset} {opts.calibration_split} has no samples to calibrate on: pass another "
                             f"--calibration_split")
        quantize_static_int8(opts.onnx, opts.out, sample_feeds(dataset, calibration), total=len(calibration))
        what = f"calibrated on {len(calibration)} samples of {args.dataset} {opts.calibration_split}"
    else:
        quantize_dynamic_int8(opts.onnx, opts.out)
        what = "matrix products only"
    size = Path(opts.out).stat().st_size / 2 ** 20
    print(f"wrote {opts.out} ({size:.1f} MiB, {opts.method} int8, {what}) in {time.perf_counter() - start:.0f} s")
    if opts.check_samples:
        # Not the calibration samples: the comparison is on data the ranges were not taken from.
        indices = spread_indices(len(dataset), opts.check_samples, exclude=calibration)
        if not indices:
            print(f"no samples of {opts.calibration_split} left to compare the int8 and float boxes on: all went "
                  f"into the calibration")
            return 0
        ious = box_agreement(float_model, OnnxRuntimeModel(opts.out), sample_feeds(dataset, indices))
        print(f"int8 vs float boxes on {len(ious)} other samples of {opts.calibration_split}: mean IoU "
              f"{ious.mean():.3f}, IoU >= 0.5 for {(ious >= 0.5).float().mean():.1%}; its accuracy: python eval.py "
              f"--checkpoint {opts.checkpoint} --backend onnxruntime --onnx {opts.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckpointError, FileWriteError, OnnxModelError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
