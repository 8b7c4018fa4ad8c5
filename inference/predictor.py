"""Images and phrases in, boxes and segmentation maps out: SegVGPredictor, the library behind predict.py.

    predictor = SegVGPredictor.from_checkpoint("outputs/demo/best_checkpoint.pth")
    result = predictor("photo.jpg", "the man on the left")   # a path, a PIL image or a uint8 [H, W, 3] RGB array
    results = predictor("photo.jpg", ["the man on the left", "the dog"])   # the image encoded once for both

result: "box" [x1, y1, x2, y2] in the image's pixels, "score" (the segmentation confidence), "mask" (the
segmentation map resized to the image, float [H, W]), "binary_mask" (it above mask_threshold, bool [H, W]), "phrase"
and "image_size" [W, H]; with mask_refine (evaluation.mask_refine) also "refined_mask" (bool [H, W]); for a file or
PIL image whose EXIF orientation is not 1, "exif_orientation" and "exif" (applied or ignored, datasets.images); with
a presence source (a model with a presence head, or presence_from="mask" for any: evaluation.presence) "present"
(the score that the phrase's object is in the image), "found" (present >= presence_threshold) and "presence_from";
with boxes_from_mask "boxes", one [x1, y1, x2, y2, score] per connected component of the binary mask
(evaluation.mask_boxes).
Paths and PIL images are read as viewers show them (exif="apply"), unless the predictor was built with exif="ignore".
"""
import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_convert

from datasets.images import EXIF_MODES, MAX_PIXELS, check_pixels, pil_to_rgb, read_photo
from datasets.tokenizer import encode_text
from datasets.transforms import canvas_map_to_image, canvas_to_image, make_transforms
from evaluation.mask_boxes import MIN_COMPONENT_AREA, boxes_from_mask
from evaluation.mask_refine import refine_mask
from evaluation.presence import (MASK_PRESENCE_TOP, mask_presence, presence_scores, presence_source, segmentation_maps,
                                 stored_threshold)
from evaluation.segmentation_map import MASK_THRESHOLD, canvas_probabilities, segmentation_confidence
from models.checkpoint import resolve_config, tokenizer_from_checkpoint, tokenizer_overrides
from models.pretrained import load_from_checkpoint, read_checkpoint
from utils.runtime import resolve_device

from .fast_path import prepare_for_inference


def load_image(image, exif="apply", max_pixels=MAX_PIXELS, canvas=None):
    """A path, PIL image or array -> (uint8 [H, W, 3] RGB, orientation note: datasets.images.oriented, (width,
    height) of the full image), with an error that says what was wrong (ImageError: too large, truncated, ...).
    exif: apply or ignore a file's or PIL image's EXIF orientation; max_pixels: the largest image accepted, checked
    before anything is decoded; canvas: the model's canvas side, for a large JPEG file decoded at a reduced scale
    (datasets.images.read_photo: its pixels then stand for the full size)."""
    if isinstance(image, (str, Path)):
        return read_photo(image, exif, max_pixels, canvas)
    if isinstance(image, Image.Image):
        check_pixels("the image", image.size, max_pixels)
        rgb, note = pil_to_rgb(image, exif)
        return rgb, note, (rgb.shape[1], rgb.shape[0])
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array [H, W, 3], got {array.dtype} {list(array.shape)}")
    check_pixels("the image", (array.shape[1], array.shape[0]), max_pixels)
    return np.array(array[..., :3], order="C"), {}, (array.shape[1], array.shape[0])


def load_rgb(image, exif="apply"):
    """load_image's pixels alone, at full size."""
    return load_image(image, exif)[0]


def image_key(image):
    """What makes two inputs the same image: the same path (as written), or the same object."""
    if isinstance(image, (str, Path)):
        return "path", str(Path(image))
    return "object", id(image)


class SegVGPredictor:
    """A model, its tokenizer and evaluation transform: images and phrases in, boxes and masks out."""

    def __init__(self, model, tokenizer, args, device="cpu", fast=True, mask_threshold=MASK_THRESHOLD,
                 mask_refine="none", exif="apply", presence_threshold=0.5, boxes_from_mask=False,
                 min_component_area=MIN_COMPONENT_AREA, presence_from=None, mask_presence_top=MASK_PRESENCE_TOP,
                 max_image_pixels=MAX_PIXELS, reduced_decode=True):
        """fast: predict with a BatchNorm-folded, channels-last copy of model (inference.fast_path); model itself
        is left untouched. mask_threshold: where "binary_mask" is cut out of the map. mask_refine: "grabcut" adds
        "refined_mask" to every result. exif: "apply" reads files and PIL images as viewers show them, "ignore" as
        their pixels are stored. presence_from: where "not found" comes from (evaluation.presence: "head", "mask"
        from the map with mask_presence_top, "both"; default the head where the model has one, else none);
        presence_threshold: where "found" is decided, or "auto" for the one the checkpoint stores. boxes_from_mask:
        add "boxes", the mask's components of at least min_component_area of the image. max_image_pixels: larger
        images are refused before they are decoded. reduced_decode: a JPEG file far larger than the canvas is decoded
        at a reduced scale (not with mask_refine, which works on the image's pixels)."""
        if exif not in EXIF_MODES:
            raise ValueError(f"unknown EXIF mode {exif!r}; choose from {', '.join(EXIF_MODES)}")
        self.presence_from = presence_source(presence_from, model)
        if presence_threshold == "auto" and self.presence_from is not None:
            presence_threshold = stored_threshold(getattr(model, "presence_thresholds", {}), self.presence_from,
                                                  "the checkpoint", mask_presence_top)
        self.mask_presence_top = mask_presence_top
        self.max_image_pixels = max_image_pixels
        # The canvas side a large JPEG may be decoded down toward (None: every image decoded whole).
        self.decode_canvas = args.imsize if reduced_decode and mask_refine == "none" else None
        if fast:
            model = prepare_for_inference(copy.deepcopy(model))
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.args = args
        self.device = torch.device(device)
        self.transform = make_transforms(args, train=False)
        self.mask_threshold = mask_threshold
        self.mask_refine = mask_refine
        self.exif = exif
        self.presence_threshold = presence_threshold
        self.component_area = min_component_area if boxes_from_mask else None

    @classmethod
    def from_checkpoint(cls, path, device="auto", bert_model=None, vocab_file=None, fast=True, **options):
        """Rebuild from a checkpoint alone (ours or an official one; fast: the inference fast path of
        inference.fast_path). bert_model / vocab_file choose the tokenizer of an official checkpoint; options: the
        constructor's (mask_threshold, mask_refine, exif, presence_threshold, boxes_from_mask, ...)."""
        overrides = tokenizer_overrides(bert_model, vocab_file)
        model, tokenizer, args, _ = load_from_checkpoint(path, overrides)
        if fast:  # the model is ours alone: fold it in place instead of a copy
            prepare_for_inference(model)
        return cls(model, tokenizer, args, resolve_device(device), fast=False, **options)

    @classmethod
    def from_pretrained(cls, spec, device="auto", **options):
        """from_checkpoint of a Hub id ORG/NAME[@revision] (downloaded into huggingface_hub's cache, offline from it
        afterwards), a folder in the Hub's layout or a .pth file (models.pretrained)."""
        return cls.from_checkpoint(spec, device, **options)

    @classmethod
    def from_onnx(cls, onnx_path, checkpoint=None, device="auto", bert_model=None, vocab_file=None, **options):
        """The network of an ONNX export run by ONNX Runtime (inference.onnx_runtime); the configuration and
        tokenizer come from checkpoint when given, else from the export's metadata."""
        from .onnx_runtime import OnnxRuntimeModel

        network = OnnxRuntimeModel(onnx_path, resolve_device(device))
        overrides = tokenizer_overrides(bert_model, vocab_file)
        source = read_checkpoint(checkpoint) if checkpoint else {"model": {}, "args": network.config,
                                                            "tokenizer": {"vocab": network.vocab}}
        args, _ = resolve_config(source, overrides)
        if checkpoint:
            network.check_matches(args, checkpoint)
        tokenizer = tokenizer_from_checkpoint(source, args, overrides)
        return cls(network, tokenizer, args, "cpu", fast=False, **options)

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

    def load(self, image):
        """load_image with the predictor's EXIF mode, pixel limit and decode scale."""
        return load_image(image, self.exif, self.max_image_pixels, self.decode_canvas)

    def prepare_image(self, image):
        """image (or load()'s (rgb, note, full size)) -> (rgb, canvas sample, placement of the image on the canvas
        [x1, y1, x2, y2], orientation note, full (width, height): what boxes and masks are given in)."""
        rgb, note, size = image if isinstance(image, tuple) else self.load(image)
        h, w = rgb.shape[:2]
        # Transforming the whole image's box tells where the image lands on the canvas (as eval_placement).
        sample = self.transform({"img": rgb, "box": np.float32([0, 0, w, h]), "text": ""})
        placement = box_convert(sample["target"][None] * self.args.imsize, "cxcywh", "xyxy")[0]
        return rgb, sample, placement, note, size

    @torch.inference_mode()
    def predict(self, images, phrases):
        """Lists of images and phrases (same length) -> one result per pair, as __call__'s. An image given more than
        once (the same path or the same object) is read and run through the CNN once for all its phrases. An image
        may also be load()'s (rgb, note, full size), read beforehand."""
        if len(images) != len(phrases):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrases")
        encoded = [self.encode(phrase) for phrase in phrases]  # every phrase checked before any image is read
        slots, image_index = {}, []
        for image in images:
            image_index.append(slots.setdefault(image_key(image), len(slots)))
        unique = {slot: image for image, slot in zip(images, image_index)}
        prepared = [self.prepare_image(unique[slot]) for slot in range(len(slots))]
        img = torch.stack([p[1]["img"] for p in prepared]).to(self.device)  # [I, 3, S, S]
        img_mask = torch.stack([p[1]["img_mask"] for p in prepared]).to(self.device)
        ids = torch.tensor([e[0] for e in encoded], device=self.device)  # [B, L]
        mask = torch.tensor([e[1] for e in encoded], device=self.device)
        image_index = torch.tensor(image_index, device=self.device)
        out = self.model(img, img_mask, ids, mask, aux=False, image_index=image_index)

        size = self.args.imsize
        boxes = box_convert(out["pred_boxes"].float().cpu(), "cxcywh", "xyxy").clamp(0, 1) * size
        prob = canvas_probabilities(out["seg_logits"].cpu(), size)  # [B, S, S]
        confidence = segmentation_confidence(prob)
        head = out.get("presence_logits")
        head = head.float().sigmoid().cpu().tolist() if head is not None else [None] * len(phrases)
        mask_present = (mask_presence([m.cpu() for m in segmentation_maps(out)], size, self.mask_presence_top).tolist()
                        if self.presence_from in ("mask", "both") else [None] * len(phrases))
        results = []
        for k, slot in enumerate(image_index.tolist()):
            rgb, _, placement, note, (w, h) = prepared[slot]
            box = canvas_to_image(boxes[k:k + 1], placement, (w, h))[0]
            image_mask = canvas_map_to_image(prob[k], placement, (w, h)).numpy()
            result = {"phrase": phrases[k], "box": [round(v, 2) for v in box.tolist()],
                      "score": confidence[k].item(), "mask": image_mask,
                      "binary_mask": image_mask > self.mask_threshold, "image_size": [w, h], **note}
            if self.presence_from is not None:
                present = presence_scores(head[k], mask_present[k])[self.presence_from]
                result.update(present=float(present), found=present >= self.presence_threshold,
                              presence_from=self.presence_from)
            if self.component_area is not None:
                result["boxes"] = boxes_from_mask(image_mask, self.mask_threshold, self.component_area)
            if self.mask_refine != "none":
                result["refined_mask"] = refine_mask(self.mask_refine, rgb, box.tolist(), image_mask,
                                                     self.mask_threshold)
            results.append(result)
        return results

    def __call__(self, image, phrase):
        """One phrase -> its result; a list of phrases -> their results, the image encoded once."""
        if isinstance(phrase, (list, tuple)):
            return self.predict([image] * len(phrase), list(phrase))
        return self.predict([image], [phrase])[0]
