"""Ground phrases in images with a trained SegVG checkpoint (ours or an official one).

    python predict.py --checkpoint outputs/demo/best_checkpoint.pth --image photo.jpg --text "the red circle" \
        [--text "another phrase" ...] [--out vis.png] [--json]
    python predict.py --checkpoint CKPT --pairs pairs.jsonl --out overlays/ --json   # {"image":..., "text":...}

Python:  predictor = SegVGPredictor.from_checkpoint(path); result = predictor(image, "the man on the left")
with image a path, a PIL image or a uint8 [H, W, 3] RGB array. The result holds the box in the original
image's pixels (x1, y1, x2, y2), the segmentation map resized to the image and the segmentation confidence.
"""
import argparse
import copy
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_convert

from datasets.grounding import read_rgb
from datasets.tokenizer import encode_text
from datasets.transforms import canvas_map_to_image, canvas_to_image, make_transforms
from eval import load_model, resolve_config, tokenizer_from_checkpoint
from models.inference import prepare_for_inference
from train import get_args_parser
from utils.checkpoint import CheckpointError, safe_load
from utils.eval_utils import canvas_probabilities, segmentation_confidence
from utils.misc import resolve_device
from utils.visualize import draw_overlay

def load_rgb(image):
    """A path, PIL image or array -> uint8 [H, W, 3] RGB, with an error that says what was wrong."""
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))  # a writable copy: torch warns about read-only arrays
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array [H, W, 3], got {array.dtype} {list(array.shape)}")
    return np.array(array[..., :3], order="C")


class SegVGPredictor:
    """A model, its tokenizer and evaluation transform: images and phrases in, boxes and masks out."""

    def __init__(self, model, tokenizer, args, device="cpu", fast=True):
        """fast: predict with a BatchNorm-folded, channels-last copy of model (models.inference); model itself
        is left untouched."""
        if fast:
            model = prepare_for_inference(copy.deepcopy(model))
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.args = args
        self.device = torch.device(device)
        self.transform = make_transforms(args, train=False)

    @classmethod
    def from_checkpoint(cls, path, device="auto", bert_model=None, vocab_file=None, imsize=None, max_query_len=None,
                        fast=True):
        """Rebuild from a checkpoint alone (fast: the inference fast path of models.inference). The canvas size and
        text length always come from the checkpoint (its position tables depend on them); a different value asked
        for is reported and ignored."""
        checkpoint = safe_load(path)
        args = get_args_parser().parse_args([])
        args.eval_model = str(path)
        explicit = set()
        for key, value in (("bert_model", bert_model), ("vocab_file", vocab_file)):
            if value:
                setattr(args, key, value)
                explicit.add(key)
        args, official = resolve_config(args, explicit, checkpoint)
        for key, value in (("imsize", imsize), ("max_query_len", max_query_len)):
            if value is not None and value != getattr(args, key):
                warnings.warn(f"--{key} {value} ignored: the checkpoint was trained with {key} "
                              f"{getattr(args, key)}, which its weights require", stacklevel=2)
        tokenizer = tokenizer_from_checkpoint(checkpoint, args, explicit)
        model = load_model(args, checkpoint, official)
        if fast:  # the model is ours alone: fold it in place instead of a copy
            prepare_for_inference(model)
        return cls(model, tokenizer, args, resolve_device(device), fast=False)

    def encode(self, text):
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the phrase is empty: give the text that refers to the object")
        text = text.lower()
        tokens = self.tokenizer.tokenize(text)
        limit = self.args.max_query_len - 2
        if len(tokens) > limit:
            warnings.warn(f"phrase of {len(tokens)} tokens truncated to the model's {limit} "
                          f"(max_query_len {self.args.max_query_len}): {text!r}", stacklevel=3)
        return encode_text(self.tokenizer, text, self.args.max_query_len)

    def prepare(self, image, text):
        rgb = load_rgb(image)
        h, w = rgb.shape[:2]
        # Transforming the whole image's box tells where the image lands on the canvas (as eval_placement).
        sample = self.transform({"img": rgb, "box": np.float32([0, 0, w, h]), "text": ""})
        ids, mask = self.encode(text)
        placement = box_convert(sample["target"][None] * self.args.imsize, "cxcywh", "xyxy")[0]
        return rgb, sample, torch.tensor(ids), torch.tensor(mask), placement

    @torch.inference_mode()
    def predict(self, images, texts):
        """Lists of images and phrases (same length) -> list of dicts: box [x1, y1, x2, y2] in image pixels,
        mask [H, W] float probabilities, confidence, text."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} phrases")
        prepared = [self.prepare(image, text) for image, text in zip(images, texts)]
        img = torch.stack([p[1]["img"] for p in prepared]).to(self.device)
        img_mask = torch.stack([p[1]["img_mask"] for p in prepared]).to(self.device)
        ids = torch.stack([p[2] for p in prepared]).to(self.device)
        mask = torch.stack([p[3] for p in prepared]).to(self.device)
        out = self.model(img, img_mask, ids, mask, aux=False)

        size = self.args.imsize
        boxes = box_convert(out["pred_boxes"].float().cpu(), "cxcywh", "xyxy").clamp(0, 1) * size
        prob = canvas_probabilities(out["seg_logits"].cpu(), size)  # [B, S, S]
        confidence = segmentation_confidence(prob)
        results = []
        for k, (rgb, _, _, _, placement) in enumerate(prepared):
            h, w = rgb.shape[:2]
            box = canvas_to_image(boxes[k:k + 1], placement, (w, h))[0]
            image_mask = canvas_map_to_image(prob[k], placement, (w, h))
            results.append({"text": texts[k], "box": [round(v, 2) for v in box.tolist()],
                            "confidence": confidence[k].item(), "mask": image_mask.numpy(), "image_size": [w, h]})
        return results

    def __call__(self, image, text):
        return self.predict([image], [text])[0]


def read_pairs(path):
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pairs.append((item["image"], item["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}, line {n}: expected {{\"image\": ..., \"text\": ...}} ({err})") from err
    return pairs


def overlay_paths(out, count):
    out = Path(out)
    if count == 1 and out.suffix:
        return [out]
    if out.suffix:  # several predictions for one file name: vis.png -> vis_0.png, vis_1.png, ...
        return [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(count)]
    return [out / f"prediction_{k}.png" for k in range(count)]


def get_parser():
    parser = argparse.ArgumentParser(description="Ground phrases in images with a SegVG checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or an official SegVG one")
    parser.add_argument("--image", help="image file (with one or more --text)")
    parser.add_argument("--text", action="append", default=[], help="phrase; repeat for several")
    parser.add_argument("--pairs", help="JSONL file of {\"image\": path, \"text\": phrase} lines")
    parser.add_argument("--out", help="overlay PNG (several predictions: numbered files, or a folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per prediction")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bert_model", help="tokenizer for official checkpoints (hub name or folder)")
    parser.add_argument("--vocab_file", help="WordPiece vocab.txt overriding the checkpoint's")
    parser.add_argument("--imsize", type=int, help="ignored with a warning if it differs from the checkpoint's")
    parser.add_argument("--max_query_len", type=int, help="ignored with a warning if it differs from the checkpoint's")
    parser.add_argument("--plain_inference", action="store_true",
                        help="run the model as trained (no BatchNorm folding, no channels-last CNN)")
    return parser


def main(argv=None):
    opts = get_parser().parse_args(argv)
    if opts.pairs:
        if opts.image or opts.text:
            raise SystemExit("give either --pairs or --image with --text, not both")
        pairs = read_pairs(opts.pairs)
    elif opts.image and opts.text:
        pairs = [(opts.image, text) for text in opts.text]
    else:
        raise SystemExit("give --image and at least one --text, or --pairs FILE.jsonl")
    warnings.simplefilter("always")
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    predictor = SegVGPredictor.from_checkpoint(opts.checkpoint, opts.device, opts.bert_model, opts.vocab_file,
                                               opts.imsize, opts.max_query_len, fast=not opts.plain_inference)
    results = []
    for start in range(0, len(pairs), opts.batch_size):
        chunk = pairs[start:start + opts.batch_size]
        results += predictor.predict([image for image, _ in chunk], [text for _, text in chunk])
    paths = overlay_paths(opts.out, len(results)) if opts.out else [None] * len(results)
    for (image, _), result, path in zip(pairs, results, paths):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_overlay(load_rgb(image), result["box"], result["mask"], result["text"],
                         result["confidence"]).save(path)
        record = {"image": str(image), "text": result["text"], "box": result["box"],
                  "confidence": round(result["confidence"], 4), "image_size": result["image_size"]}
        if path is not None:
            record["overlay"] = str(path)
        if opts.json:
            print(json.dumps(record))
        else:
            box = ", ".join(f"{v:.1f}" for v in result["box"])
            print(f"{image}: \"{result['text']}\" -> box [{box}] confidence {result['confidence']:.3f}"
                  + (f" (overlay {path})" if path else ""))
    return results


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
