"""The browser demo: upload an image, type phrases, see each phrase's box and mask (docs/app.md).

    pip install -r requirements-app.txt
    python app.py                                   # the demo checkpoint of `bash train.sh`
    python app.py --checkpoint ckpt/unc/best_checkpoint.pth --port 7861
    python app.py --backend onnxruntime --onnx segvg.onnx           # ONNX Runtime (docs/onnx.md)

The page's work is done by inference.app_request over inference.predictor.SegVGPredictor; inference.web_app lays it out.
"""
import argparse
import sys
from pathlib import Path

from datasets.images import add_image_flags
from evaluation.mask_refine import add_mask_refine_flag
from evaluation.presence import add_answer_flags
from models.checkpoint import CheckpointError
from utils.files import FileWriteError
from utils.options import add_backend_flags, add_exif_flag, add_tokenizer_flags
from utils.runtime import keep_freed_memory

DEMO_CHECKPOINT = "outputs/demo/best_checkpoint.pth"
# A page anyone may upload to refuses far smaller images than Pillow's limit (phones take at most 200 MP): 64 MP.
APP_MAX_PIXELS = 64_000_000
MAX_FILE_SIZE = "50mb"


def get_args_parser():
    parser = argparse.ArgumentParser(prog="app.py", description="A browser demo of a SegVG checkpoint (Gradio).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", help=f"our checkpoint or an official SegVG one: a .pth file, a folder in the "
                                             f"Hub's layout or a Hub id ORG/NAME[@revision] (default "
                                             f"{DEMO_CHECKPOINT}; with --backend onnxruntime: optional)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on; 0.0.0.0 makes the page reachable from other machines")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda, cuda:N or cpu")
    parser.add_argument("--data_root", default="data/demo",
                        help="the demo data, whose test split gives the page's examples when it exists")
    parser.add_argument("--examples", type=int, default=6, help="examples from the demo's test split (0: none)")
    parser.add_argument("--max_queue", type=int, default=64,
                        help="requests that may wait while one is answered; more are told the queue is full")
    add_answer_flags(parser)
    add_mask_refine_flag(parser)
    add_exif_flag(parser)
    add_image_flags(parser, APP_MAX_PIXELS)
    add_tokenizer_flags(parser)
    add_backend_flags(parser)
    return parser


def demo_examples(data_root, count):
    """[image path, phrase] of the first test images of the demo data (one phrase each), or [] without the data."""
    from datasets.catalog import image_dir, index_files, load_entries, parse_entry

    path = index_files(Path(data_root) / "split", "demo", "test")[0]
    if count <= 0 or not path.is_file():
        return []
    examples, seen = [], set()
    for entry in load_entries(path, "demo"):
        file_name, _, phrase, _ = parse_entry(entry, "demo")
        if file_name not in seen:
            seen.add(file_name)
            examples.append([str(image_dir(data_root, "demo") / file_name), phrase])
        if len(examples) == count:
            break
    return examples


def build_predictor(opts):
    from inference import SegVGPredictor

    options = {"exif": opts.exif, "presence_threshold": opts.presence_threshold,
               "max_image_pixels": opts.max_image_pixels, "reduced_decode": not opts.full_decode,
               "boxes_from_mask": opts.boxes_from_mask, "min_component_area": opts.min_component_area,
               "presence_from": opts.presence_from, "mask_presence_top": opts.mask_presence_top}
    if opts.backend == "onnxruntime":
        return SegVGPredictor.from_onnx(opts.onnx, opts.checkpoint, opts.device, opts.bert_model, opts.vocab_file,
                                        **options)
    checkpoint = opts.checkpoint or DEMO_CHECKPOINT
    if opts.checkpoint is None and not Path(checkpoint).is_file():
        hint = "train the demo first with `bash train.sh`" if opts.checkpoint is None else "check the path"
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: {hint}, or give --checkpoint CKPT")
    return SegVGPredictor.from_checkpoint(checkpoint, opts.device, opts.bert_model, opts.vocab_file, **options)


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    try:
        from inference.web_app import build_app
    except ImportError as err:
        raise ImportError(f"{err.name or err} is missing: install the app's requirements with "
                          f"`pip install -r requirements-app.txt`") from None
    if opts.max_queue < 1:
        raise ValueError(f"--max_queue must be at least 1, got {opts.max_queue}")
    predictor = build_predictor(opts)
    if predictor.device.type == "cpu" and (allocator := keep_freed_memory()):
        print(allocator, flush=True)
    checkpoint = opts.checkpoint or DEMO_CHECKPOINT
    # The page names files only: the server's folders are not shown to whoever opens it.
    name = Path(checkpoint).name
    if opts.backend == "onnxruntime":
        name = f"{Path(opts.onnx).name} (ONNX Runtime)" + (f" with {Path(opts.checkpoint).name}" if opts.checkpoint
                                                           else "")
    examples = demo_examples(opts.data_root, opts.examples)
    app = build_app(predictor, name, examples, opts.mask_refine, opts.max_queue)
    print(f"SegVG demo of {checkpoint} on {predictor.device.type}: open http://{opts.host}:{opts.port}", flush=True)
    app.launch(server_name=opts.host, server_port=opts.port, share=False, ssr_mode=False, show_error=False,
               max_file_size=MAX_FILE_SIZE, allowed_paths=[str(Path(opts.data_root))] if examples else None,
               quiet=True)


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, FileWriteError, FileNotFoundError, ImportError, ValueError, OSError) as err:
        sys.exit(f"error: {err}")
