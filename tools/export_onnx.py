"""Export a SegVG checkpoint's inference graph to ONNX and check it against PyTorch with ONNX Runtime (docs/onnx.md).

    pip install -r requirements-onnx.txt
    python tools/export_onnx.py --checkpoint outputs/demo/best_checkpoint.pth --out segvg.onnx
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.fast_path import prepare_for_inference
from inference.onnx_export import DEFAULT_OPSET, compare_with_onnxruntime, export_onnx
from inference.onnx_runtime import OnnxModelError
from models.checkpoint import CheckpointError, tokenizer_overrides
from models.pretrained import load_from_checkpoint
from utils.files import FileWriteError
from utils.options import add_tokenizer_flags

BOX_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-3


def get_args_parser():
    parser = argparse.ArgumentParser(prog="tools/export_onnx.py", description="Export a SegVG checkpoint to ONNX.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="our checkpoint or an official SegVG one: a .pth file, a folder in the Hub's layout or a "
                             "Hub id ORG/NAME[@revision]")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--batch", default="dynamic", help="'dynamic', or a fixed batch size")
    add_tokenizer_flags(parser)
    parser.add_argument("--no_check", action="store_true",
                        help="skip the comparison with PyTorch (ONNX's checker still runs)")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.batch != "dynamic" and not (opts.batch.isdigit() and int(opts.batch) > 0):
        raise ValueError(f"--batch must be 'dynamic' or a positive integer, got {opts.batch!r}")
    overrides = tokenizer_overrides(opts.bert_model, opts.vocab_file)
    model, tokenizer, args, _ = load_from_checkpoint(opts.checkpoint, overrides)
    model = prepare_for_inference(model, channels_last=False)
    start = time.perf_counter()
    export_onnx(model, args, tokenizer, opts.out, opts.opset, opts.batch)
    size = Path(opts.out).stat().st_size / 2 ** 20
    print(f"wrote {opts.out} ({size:.1f} MiB, opset {opts.opset}, batch {opts.batch}, image {args.imsize} x "
          f"{args.imsize}, {args.max_query_len} tokens) in {time.perf_counter() - start:.0f} s; ONNX checker passed")
    if opts.no_check:
        return 0
    batches = (1, 3) if opts.batch == "dynamic" else (int(opts.batch),)
    worst = compare_with_onnxruntime(model, args, tokenizer, opts.out, batches)
    ok = (worst["boxes"] <= BOX_TOLERANCE and worst["probabilities"] <= PROBABILITY_TOLERANCE
          and worst.get("presence", 0.0) <= PROBABILITY_TOLERANCE)
    presence = f", max |presence difference| {worst['presence']:.2e}" if "presence" in worst else ""
    print(f"ONNX Runtime vs PyTorch, batches {', '.join(map(str, batches))} (an empty, a typical and a full-length "
          f"phrase): max |box difference| {worst['boxes']:.2e} (tolerance {BOX_TOLERANCE:.0e}), max |probability "
          f"difference| {worst['probabilities']:.2e}{presence} (tolerance {PROBABILITY_TOLERANCE:.0e}): "
          f"{'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckpointError, FileWriteError, OnnxModelError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
