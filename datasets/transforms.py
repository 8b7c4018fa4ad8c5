"""Augmentations of the original SegVG/TransVG pipeline on numpy images (docs/original.md, "Augmentation" and
"Evaluation transform").

A sample is a dict {"img": uint8 [H, W, 3] RGB, "box": float32 [4] xyxy in image pixels, "text": str}; a phrase with
no target or several also has "boxes": float32 [K, 4], each target's box ("box" is then their union, or zeros); with
mask supervision "mask": uint8 [H, W], the object's true mask as 0 / 255, resampled as the image is and cut at one
half only on the canvas. Every transform keeps the box and the mask on the same
pixels as the image; NormalizeAndPad ends the pipeline and
returns the tensors the model sees. Randomness comes from Python's `random`, which the training dataset
seeds per sample (GroundingDataset.augment_seed).
"""
import random
import re

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.ops import box_convert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The crop branch never runs when the text contains one of these, as a substring (original gate).
DIRECTION_WORDS = ("left", "right", "top", "bottom", "middle")

# Whole words only, so "bright" and "upright" survive; "leftmost", "left-hand" etc. swap their stem.
_LEFT_RIGHT = re.compile(r"\b(left|right)(most|hand|side|ward|wards)?\b")


def swap_left_right(text, mode="word"):
    """Mirror the direction words of `text`: whole words ("word") or the original substring swap ("legacy")."""
    if mode == "legacy":
        return text.replace("right", "*&^special^&*").replace("left", "right").replace("*&^special^&*", "left")
    return _LEFT_RIGHT.sub(lambda m: ("right" if m[1] == "left" else "left") + (m[2] or ""), text)


def resize(img, width, height):
    """Bilinear resize of a uint8 [H, W, 3] image (or [H, W] plane) as PIL's (the original's): antialiased when
    shrinking. torchvision's uint8 kernel matches PIL within one level at every ratio (tests/test_data_transforms.py);
    OpenCV's INTER_LINEAR does not antialias and differs by up to ~50 levels when shrinking by less than half."""
    if (width, height) == (img.shape[1], img.shape[0]):
        return img
    if img.ndim == 2:
        return resize(img[..., None], width, height)[..., 0]
    if not img.flags.writeable:  # np.asarray of a PIL image: torch refuses to view it silently
        img = np.array(img)
    chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # a view, channels-last in memory
    out = TF.resize(chw, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return out.permute(1, 2, 0).contiguous().numpy()


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, sample):
        for t in self.transforms:
            sample = t(sample)
        return sample


class RandomResize:
    """Resize the long (or short) side to a size drawn from `sizes`; the new size is rounded."""

    def __init__(self, sizes, long_side=True):
        self.sizes = list(sizes)
        self.long_side = long_side

    def __call__(self, sample):
        img = sample["img"]
        h, w = img.shape[:2]
        size = random.choice(self.sizes)
        ratio = size / (max(h, w) if self.long_side else min(h, w))
        # At least one pixel: a very thin image (say 4000 x 3) would otherwise round to nothing.
        new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
        sample["img"] = resize(img, new_w, new_h)
        sample["box"] = sample["box"] * np.float32(ratio)
        if "boxes" in sample:
            sample["boxes"] = sample["boxes"] * np.float32(ratio)
        if "mask" in sample:
            sample["mask"] = resize(sample["mask"], new_w, new_h)
        return sample


class RandomSizeCrop:
    """Up to `max_try` random crops; the first one keeping IoU >= 0.5 with the box is taken (VLTVG), and with several
    targets half of each target's box too. A phrase with no target is not cropped (nothing to keep)."""

    def __init__(self, min_size, max_size, max_try=20):
        self.min_size = min_size
        self.max_size = max_size
        self.max_try = max_try

    def __call__(self, sample):
        img, box = sample["img"], sample["box"]
        img_h, img_w = img.shape[:2]
        area = (box[2] - box[0]) * (box[3] - box[1])
        for _ in range(self.max_try):
            w = random.randint(self.min_size, min(img_w, self.max_size))
            h = random.randint(self.min_size, min(img_h, self.max_size))
            top = random.randint(0, img_h - h)
            left = random.randint(0, img_w - w)
            shift, limit = np.float32([left, top, left, top]), np.float32([w, h, w, h])
            crop_box = np.clip(box - shift, 0, limit)
            # The clipped box lies inside the original one, so IoU = clipped area / original area.
            if area > 0 and (crop_box[2] - crop_box[0]) * (crop_box[3] - crop_box[1]) >= 0.5 * area:
                if "boxes" in sample:
                    boxes = np.clip(sample["boxes"] - shift, 0, limit)
                    if not (box_areas(boxes) >= 0.5 * box_areas(sample["boxes"])).all():
                        continue
                    sample["boxes"] = boxes
                sample["img"] = img[top:top + h, left:left + w]
                sample["box"] = crop_box
                if "mask" in sample:
                    sample["mask"] = sample["mask"][top:top + h, left:left + w]
                return sample
        return sample


def box_areas(boxes):
    """[K, 4] x1, y1, x2, y2 -> [K]"""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


class RandomSelect:
    """`first` for texts with a direction word (cropping could change what they refer to), else `second` with p."""

    def __init__(self, first, second, p=0.5):
        self.first = first
        self.second = second
        self.p = p

    def __call__(self, sample):
        if any(word in sample["text"] for word in DIRECTION_WORDS):
            return self.first(sample)
        if random.random() < self.p:
            return self.second(sample)
        return self.first(sample)


def _blend_lut(base, factor):
    """uint8 lookup table of PIL's Image.blend(base, img, factor): float32 maths, clipped, truncated."""
    values = np.float32(base) + np.float32(factor) * (np.arange(256, dtype=np.float32) - np.float32(base))
    return np.clip(values, 0, 255).astype(np.uint8)


class ColorJitter:
    """PIL ImageEnhance brightness, contrast and saturation, factors U[1-x, 1+x], random order, prob. p."""

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.4, p=0.8):
        self.ranges = [(max(0.0, 1 - x), 1 + x) for x in (brightness, contrast, saturation)]
        self.p = p

    @staticmethod
    def brightness(img, factor):
        return cv2.LUT(img, _blend_lut(0, factor))

    @staticmethod
    def contrast(img, factor):
        mean = int(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean() + 0.5)
        return cv2.LUT(img, _blend_lut(mean, factor))

    @staticmethod
    def saturation(img, factor):
        gray = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        return cv2.addWeighted(img, factor, gray, 1 - factor, 0)

    def __call__(self, sample):
        if random.random() < self.p:
            ops = [(self.brightness, self.ranges[0]), (self.contrast, self.ranges[1]),
                   (self.saturation, self.ranges[2])]
            random.shuffle(ops)
            for op, (low, high) in ops:
                factor = random.uniform(low, high)
                if factor != 1:  # each op is the identity at 1 (--color_jitter 0); the draws are kept all the same
                    sample["img"] = op(sample["img"], factor)
        return sample


class GaussianBlur:
    """Gaussian blur with sigma (PIL's "radius") U[0.1, 2.0], probability p."""

    def __init__(self, p=0.5, sigma=(0.1, 2.0)):
        self.p = p
        self.sigma = sigma

    def __call__(self, sample):
        if random.random() < self.p:
            sample["img"] = cv2.GaussianBlur(sample["img"], (0, 0), random.uniform(*self.sigma))
        return sample


class RandomHorizontalFlip:
    """Mirror image and box, and swap left/right in the text so that it still describes the box."""

    def __init__(self, p=0.5, text_mode="word"):
        self.p = p
        self.text_mode = text_mode

    def __call__(self, sample):
        if random.random() < self.p:
            w = sample["img"].shape[1]
            x1, y1, x2, y2 = sample["box"]
            sample["img"] = cv2.flip(sample["img"], 1)
            sample["box"] = np.float32([w - x2, y1, w - x1, y2])
            if "boxes" in sample:
                boxes = sample["boxes"]
                sample["boxes"] = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
            if "mask" in sample:
                sample["mask"] = sample["mask"][:, ::-1]
            sample["text"] = swap_left_right(sample["text"], self.text_mode)
        return sample


class NormalizeAndPad:
    """ImageNet-normalise, paste on a zero size x size canvas, and build the box targets.

    Returns img [3,S,S] float, img_mask [S,S] bool (True = padding, only with mask_padding; the original
    marks none), image_rect [4] long (x1, y1, x2, y2: where the image lies on the canvas, padding or not),
    target [4] normalised cx,cy,w,h on the canvas, pos_region [S,S] bool (the truncated integer box filled,
    docs/original.md, "Loss"; with "boxes", each of them filled: empty for no target), the text, and gt_mask [S,S]
    bool when the sample has a "mask".
    """

    def __init__(self, size, translate=False, mask_padding=False):
        self.size = size
        self.translate = translate
        self.mask_padding = mask_padding
        std = np.float32(IMAGENET_STD)
        # (x / 255 - mean) / std as one multiply-subtract on the uint8 values.
        self.scale = 1 / (255 * std)
        self.shift = np.float32(IMAGENET_MEAN) / std

    def __call__(self, sample):
        img = sample["img"]
        h, w = img.shape[:2]
        size = self.size
        if self.translate:
            top = random.randint(0, size - h)
            left = random.randint(0, size - w)
        else:
            top = round((size - h) / 2 - 0.1)
            left = round((size - w) / 2 - 0.1)

        # numpy, not torch: torch would spread these small ops over threads, which costs far more than
        # it saves when the loader runs in the main process next to other jobs.
        canvas = np.zeros((3, size, size), np.float32)
        for c, plane in enumerate(cv2.split(img)):  # contiguous planes: twice as fast as a strided transpose
            region = canvas[c, top:top + h, left:left + w]
            np.multiply(plane, self.scale[c], out=region)
            region -= self.shift[c]

        img_mask = np.zeros((size, size), bool)
        if self.mask_padding:
            img_mask[:] = True
            img_mask[top:top + h, left:left + w] = False

        offset = np.float32([left, top, left, top])
        x1, y1, x2, y2 = (float(v) for v in sample["box"] + offset)
        pos_region = np.zeros((size, size), bool)
        for box in (sample["boxes"] + offset).tolist() if "boxes" in sample else [(x1, y1, x2, y2)]:
            # int() truncates like the original; clamping only matters for boxes outside the image.
            c1, r1, c2, r2 = (min(max(int(v), 0), size) for v in box)
            pos_region[r1:r2, c1:c2] = True

        target = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=torch.float32) / size
        out = {"img": torch.from_numpy(canvas), "img_mask": torch.from_numpy(img_mask),
               "image_rect": torch.tensor([left, top, left + w, top + h]), "target": target,
               "pos_region": torch.from_numpy(pos_region), "text": sample["text"]}
        if "mask" in sample:
            gt_mask = np.zeros((size, size), bool)
            gt_mask[top:top + h, left:left + w] = sample["mask"] >= 128
            out["gt_mask"] = torch.from_numpy(gt_mask)
        return out


def make_transforms(args, train):
    """Training (docs/original.md, "Augmentation") or evaluation ("Evaluation transform") pipeline for canvas size
    args.imsize.

    The original's absolute sizes (scales 640-32i, crop branch 400-600 / 384-600) are for a 640 canvas;
    they scale with imsize / 640 so that small canvases keep the same relative geometry.
    """
    size = args.imsize
    if not train:
        return Compose([RandomResize([size]), NormalizeAndPad(size, mask_padding=args.mask_padding)])

    rel = size / 640
    scales = [round(size * (20 - i) / 20) for i in range(7)] if args.aug_scale else [size]
    crop = Compose([
        RandomResize([round(s * rel) for s in (400, 500, 600)], long_side=False),
        RandomSizeCrop(round(384 * rel), round(600 * rel)),
        RandomResize(scales),
    ])
    return Compose([
        RandomSelect(RandomResize(scales), crop, p=0.5 if args.aug_crop else 0.0),
        ColorJitter(args.color_jitter, args.color_jitter, args.color_jitter),
        GaussianBlur(p=0.5 if args.aug_blur else 0.0),
        RandomHorizontalFlip(text_mode=args.flip_text),
        NormalizeAndPad(size, translate=args.aug_translate, mask_padding=args.mask_padding),
    ])


def eval_placement(width, height, args):
    """Where the evaluation transform puts a width x height image on the canvas: tensor [4] x1, y1, x2, y2
    in canvas pixels. Found by transforming the whole image's box, so it can never drift from the transform."""
    image = np.zeros((height, width, 3), np.uint8)
    sample = make_transforms(args, train=False)({"img": image, "box": np.float32([0, 0, width, height]), "text": ""})
    return box_convert(sample["target"] * args.imsize, "cxcywh", "xyxy")


def canvas_to_image(boxes, placement, image_size):
    """Canvas-pixel boxes [N, 4] (x1, y1, x2, y2) -> the original image's pixels, undoing the letterbox.

    placement: [4] the image's rectangle on the canvas (eval_placement); its width over the image width is the
    resize ratio. image_size: (w, h). Results are clipped to the image.
    """
    w, h = image_size
    ratio = (placement[2] - placement[0]) / w
    boxes = (boxes - placement[:2].repeat(2)) / ratio
    return torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype))


def canvas_map_to_image(canvas_map, placement, image_size):
    """A [S, S] map on the canvas -> [h, w] on the original image: crop the image's rectangle, resize back."""
    w, h = image_size
    x1, y1, x2, y2 = (round(v) for v in placement.tolist())
    region = canvas_map[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)].float()  # a row or column at least
    return torch.nn.functional.interpolate(region[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
