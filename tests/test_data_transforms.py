"""Geometric and photometric invariants of the data transforms (docs/original.md, "Augmentation", "Evaluation
transform", "Loss")."""
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from datasets import transforms as T
from train import get_args_parser

MEAN = np.float32(T.IMAGENET_MEAN)
STD = np.float32(T.IMAGENET_STD)


def scene(width=200, height=150, box=(30, 40, 90, 100), blue=(150, 60, 180, 110), seed=0):
    """Grey noisy image with a red box and (optionally) a blue box; boxes xyxy, exclusive ends."""
    rng = np.random.default_rng(seed)
    img = np.repeat(rng.integers(90, 140, (height, width, 1), dtype=np.uint8), 3, axis=2)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = (220, 20, 20)
    if blue:
        bx1, by1, bx2, by2 = blue
        img[by1:by2, bx1:bx2] = (20, 20, 220)
    return img


def colour_bbox(img, channel=0):
    """xyxy bbox (exclusive) of the pixels where `channel` dominates by at least half its peak dominance."""
    img = np.asarray(img, dtype=np.float32)
    dominance = img[..., channel] - np.delete(img, channel, axis=2).max(axis=2)
    ys, xs = np.nonzero(dominance > 0.5 * dominance.max())
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def unnormalise(canvas):
    """[3,S,S] normalised -> [S,S,3] float in 0..255."""
    return (canvas.numpy().transpose(1, 2, 0) * STD + MEAN) * 255


def sample(img=None, box=(30, 40, 90, 100), text="the red box"):
    return {"img": scene() if img is None else img, "box": np.float32(box), "text": text}


def args_for(*flags):
    return get_args_parser().parse_args(list(flags))


@pytest.mark.parametrize("size,long_side", [(128, True), (300, True), (60, True), (120, False), (400, False)])
def test_resize_keeps_box_on_pixels(size, long_side):
    out = T.RandomResize([size], long_side=long_side)(sample())
    h, w = out["img"].shape[:2]
    assert (max(h, w) if long_side else min(h, w)) == size
    assert np.abs(colour_bbox(out["img"]) - out["box"]).max() <= 1.0


def test_resize_rounds_like_the_original():
    out = T.RandomResize([101])(sample(img=scene(width=200, height=151)))
    assert out["img"].shape[:2] == (round(151 * 101 / 200), 101)  # ratio 0.505: 76.255 -> 76


def test_crop_keeps_box_on_pixels_and_iou():
    random.seed(0)
    crop = T.RandomSizeCrop(80, 140)
    cropped = 0
    for _ in range(40):
        out = crop(sample())
        img, box = out["img"], out["box"]
        if img.shape[:2] != (150, 200):
            cropped += 1
            assert 80 <= img.shape[0] <= 140 and 80 <= img.shape[1] <= 140
        # Slicing is exact: the red pixels visible in the crop are exactly the clipped box.
        np.testing.assert_array_equal(colour_bbox(img), box)
        assert (box[2] - box[0]) * (box[3] - box[1]) >= 0.5 * 60 * 60
    assert cropped > 0


def test_crop_gives_up_when_no_crop_keeps_the_box():
    random.seed(0)
    out = T.RandomSizeCrop(40, 40)(sample(box=(10, 10, 190, 140)))  # a 40x40 crop never holds half of it
    assert out["img"].shape[:2] == (150, 200)
    np.testing.assert_array_equal(out["box"], [10, 10, 190, 140])


def test_flip_mirrors_box_and_text():
    t = T.RandomHorizontalFlip(p=1.0)
    out = t(sample(text="the red box on the left"))
    np.testing.assert_array_equal(out["box"], [200 - 90, 40, 200 - 30, 100])
    np.testing.assert_array_equal(colour_bbox(out["img"]), out["box"])
    assert out["text"] == "the red box on the right"


@pytest.mark.parametrize("text,word,legacy", [
    ("man on left", "man on right", "man on right"),
    ("right guy left of the bright lamp", "left guy right of the bright lamp", "left guy right of the bleft lamp"),
    ("leftmost zebra", "rightmost zebra", "rightmost zebra"),
    ("the left-hand one, rightmost", "the right-hand one, leftmost", "the right-hand one, leftmost"),
    ("upright copyright leftover", "upright copyright leftover", "upleft copyleft rightover"),
    ("top bottom middle", "top bottom middle", "top bottom middle"),
])
def test_flip_swaps_words_and_nothing_else(text, word, legacy):
    assert T.swap_left_right(text, "word") == word
    assert T.swap_left_right(text, "legacy") == legacy


def test_direction_gate_is_a_substring_test():
    first = lambda s: {**s, "path": "first"}  # noqa: E731
    second = lambda s: {**s, "path": "second"}  # noqa: E731
    select = T.RandomSelect(first, second, p=1.0)
    assert select(sample(text="the bright lamp"))["path"] == "first"  # "right" inside "bright" (original gate)
    assert select(sample(text="the stopper"))["path"] == "first"
    assert select(sample(text="the red box"))["path"] == "second"


@pytest.mark.parametrize("translate", [False, True])
def test_normalize_and_pad(translate):
    random.seed(1)
    out = T.NormalizeAndPad(256, translate=translate)(sample(box=(30.6, 40.2, 90.9, 100.5)))
    img, target, pos = out["img"], out["target"], out["pos_region"]
    assert img.shape == (3, 256, 256) and img.dtype == torch.float32
    content = np.nonzero(img.abs().sum(0).numpy())
    top, left = int(content[0].min()), int(content[1].min())
    if not translate:
        assert (top, left) == (round((256 - 150) / 2 - 0.1), round((256 - 200) / 2 - 0.1))
    # Pixels come back exactly (up to float error) and the padding is zero.
    np.testing.assert_allclose(unnormalise(img)[top:top + 150, left:left + 200], scene(), atol=1e-2)
    assert img[:, :top].abs().max() == 0 and img[:, :, :left].abs().max() == 0
    x1, y1, x2, y2 = 30.6 + left, 40.2 + top, 90.9 + left, 100.5 + top
    torch.testing.assert_close(target, torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) / 256)
    expected = torch.zeros(256, 256, dtype=torch.bool)
    expected[int(y1):int(y2), int(x1):int(x2)] = True
    assert pos.dtype == torch.bool and torch.equal(pos, expected)
    assert not out["img_mask"].any()


def test_mask_padding_marks_exactly_the_padding():
    out = T.NormalizeAndPad(256, mask_padding=True)(sample())
    content = out["img"].abs().sum(0) > 0
    assert torch.equal(out["img_mask"], ~content)


def test_brightness_and_contrast_match_pil():
    img = scene(seed=3)
    img[60:80, 100:140] = (250, 200, 10)
    pil = Image.fromarray(img)
    for factor in (0.6, 0.93, 1.27, 1.4):
        np.testing.assert_array_equal(T.ColorJitter.brightness(img, factor),
                                      np.asarray(ImageEnhance.Brightness(pil).enhance(factor)))
        diff = T.ColorJitter.contrast(img, factor).astype(int) - np.asarray(ImageEnhance.Contrast(pil).enhance(factor))
        assert np.abs(diff).max() <= 1
        diff = T.ColorJitter.saturation(img, factor).astype(int) - np.asarray(ImageEnhance.Color(pil).enhance(factor))
        assert np.abs(diff).max() <= 2  # OpenCV rounds where PIL truncates


def test_colour_jitter_off_is_the_identity_and_draws_as_when_on():
    """At --color_jitter 0 each op is skipped (exact: the identity at factor 1) but the random draws are kept, so the
    rest of the pipeline sees the same random stream as with any jitter strength."""
    img = scene(seed=4)
    for op in (T.ColorJitter.brightness, T.ColorJitter.contrast, T.ColorJitter.saturation):
        np.testing.assert_array_equal(op(img, 1.0), img)
    for seed in range(20):
        random.seed(seed)
        out = T.ColorJitter(0, 0, 0)(sample(img=img))
        after_off = random.random()
        np.testing.assert_array_equal(out["img"], img)
        random.seed(seed)
        T.ColorJitter(0.3, 0.3, 0.3)(sample(img=img))
        assert random.random() == after_off


def test_make_transforms_scales():
    pipe = T.make_transforms(args_for("--aug_scale", "--aug_crop"), train=True)
    select = pipe.transforms[0]
    assert select.first.sizes == [640, 608, 576, 544, 512, 480, 448]
    assert select.second.transforms[0].sizes == [400, 500, 600]
    assert (select.second.transforms[1].min_size, select.second.transforms[1].max_size) == (384, 600)
    assert select.p == 0.5
    assert T.make_transforms(args_for(), train=True).transforms[0].first.sizes == [640]
    assert T.make_transforms(args_for(), train=True).transforms[0].p == 0.0


@pytest.mark.parametrize("text", ["the red box on the left", "the red box"])
def test_training_pipeline_end_to_end(text):
    """All augmentations on: the red box stays under the target, pos_region is its truncated rectangle,
    and the text says "right" exactly when the image was mirrored (red box then right of the blue one)."""
    args = args_for("--imsize", "128", "--aug_scale", "--aug_crop", "--aug_translate")
    pipe = T.make_transforms(args, train=True)
    random.seed(0)
    for _ in range(30):
        out = pipe(sample(text=text))
        pixels = unnormalise(out["img"])
        target = out["target"].numpy() * 128
        box = np.array([target[0] - target[2] / 2, target[1] - target[3] / 2,
                        target[0] + target[2] / 2, target[1] + target[3] / 2])
        assert np.abs(colour_bbox(pixels) - box).max() <= 1.5
        x1, y1, x2, y2 = (int(v) for v in box + 1e-4)
        assert out["pos_region"].sum() == (y2 - y1) * (x2 - x1)
        assert out["pos_region"][y1:y2, x1:x2].all()
        if "left" in text or "right" in out["text"]:
            mirrored = colour_bbox(pixels)[0] > colour_bbox(pixels, channel=2)[0]
            assert ("right" in out["text"]) == mirrored


def test_eval_pipeline_is_deterministic_and_centred():
    pipe = T.make_transforms(args_for("--imsize", "128"), train=False)
    a, b = pipe(sample()), pipe(sample())
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["target"], b["target"])
    # 200x150 -> 128x96, centred vertically at (128 - 96) / 2 = 16.
    torch.testing.assert_close(a["target"] * 128, torch.tensor([60 * 0.64, 70 * 0.64 + 16, 60 * 0.64, 60 * 0.64]))


def test_blur_keeps_geometry():
    random.seed(0)
    out = T.GaussianBlur(p=1.0)(sample())
    assert np.abs(colour_bbox(out["img"]) - out["box"]).max() <= 3


def photo_like(width, height, seed=0):
    """Smooth shading, hard edges and fine texture: what separates antialiased from plain bilinear shrinking."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([128 + 100 * np.sin(x / 37.0 + c) * np.cos(y / 23.0 - c) for c in range(3)], -1)
    img += 40 * ((x // 9 + y // 13) % 2)[..., None]  # a checker texture with hard edges
    img += rng.normal(0, 18, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size, target", [
    ((1024, 768), (640, 480)), ((1024, 768), (560, 420)), ((1024, 768), (480, 360)), ((1024, 768), (320, 240)),
    ((640, 480), (448, 336)), ((500, 375), (333, 250)), ((612, 612), (97, 97)), ((300, 200), (640, 427)),
    ((64, 96), (427, 640)), ((333, 500), (640, 961))])
def test_resize_matches_pil_bilinear_within_one_level(size, target):
    img = photo_like(*size)
    ours = T.resize(img, *target)
    pil = np.asarray(Image.fromarray(img).resize(target, Image.BILINEAR))
    assert ours.shape == pil.shape
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1
