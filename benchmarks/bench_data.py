"""Cost of the training data pipeline.

    python -m benchmarks.bench_data [--samples 300]
    python -m benchmarks.bench_data --demo [--rounds 5]

Default: builds a small RefCOCO-layout dataset of synthetic COCO-like JPEGs in a temporary folder and times
dataset[i] (decode + augment + normalise/pad + tokenize) at 640 with every augmentation on, in one thread, as in a
DataLoader worker. For comparison it times the original pipeline (PIL + torchvision, docs/original.md,
"Augmentation") on the same samples.

--demo: generates a small demo dataset and times the training loader of the demo configuration (tools/demo_flags.txt:
batches of 64 in the main process) per batch without --cache_data and, after one epoch has filled the cache, with it;
the two alternate, --rounds epochs of 20 batches each.
"""
import argparse
import random
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms as TV
import torchvision.transforms.functional as F
from PIL import Image, ImageEnhance, ImageFilter

from datasets import build_dataset, build_loaders, build_tokenizer
from datasets import demo as demo_data
from utils.options import build_training_parser

ROOT = Path(__file__).resolve().parents[1]

SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (612, 612)]
PHRASES = ["man in the red shirt", "the woman on the left", "blue car", "second bus from right", "dog"]


def make_dataset(root, n_images=40, n_entries=400):
    """COCO-like JPEGs (smooth content plus texture) and a unc_train.pth index over them."""
    rng = np.random.default_rng(0)
    image_dir = root / "images" / "other/images/mscoco/images/train2014"
    image_dir.mkdir(parents=True)
    (root / "split" / "unc").mkdir(parents=True)
    names = []
    for n in range(n_images):
        w, h = SIZES[n % len(SIZES)]
        smooth = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        names.append((f"COCO_train2014_{n:012d}.jpg", w, h))
        Image.fromarray(img).save(image_dir / names[-1][0], quality=90)
    entries = []
    for i in range(n_entries):
        name, w, h = names[i % n_images]
        bw, bh = rng.uniform(0.1, 0.6) * w, rng.uniform(0.1, 0.6) * h
        box = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]
        entries.append((name, i, box, PHRASES[i % len(PHRASES)], []))
    torch.save(entries, root / "split" / "unc" / "unc_train.pth")
    words = sorted({w for p in PHRASES for w in p.split()})
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")


def original_pipeline(img, box, text, size=640):
    """The original make_transforms('train') with --aug_scale --aug_crop --aug_translate --aug_blur."""
    def resize(img, box, target, long_side=True):
        ratio = target / (max(img.size) if long_side else min(img.size))
        return F.resize(img, [round(img.height * ratio), round(img.width * ratio)]), box * ratio

    scales = [size - 32 * i for i in range(7)]
    if not any(w in text for w in ("left", "right", "top", "bottom", "middle")) and random.random() < 0.5:
        img, box = resize(img, box, random.choice([400, 500, 600]), long_side=False)
        for _ in range(20):
            w = random.randint(384, min(img.width, 600))
            h = random.randint(384, min(img.height, 600))
            i, j, h, w = TV.RandomCrop.get_params(img, [h, w])
            crop = torch.min((box - torch.tensor([j, i, j, i])).reshape(2, 2), torch.tensor([w, h])).clamp(min=0)
            crop = crop.reshape(-1)
            if (crop[2] - crop[0]) * (crop[3] - crop[1]) >= 0.5 * (box[2] - box[0]) * (box[3] - box[1]):
                img, box = F.crop(img, i, j, h, w), crop
                break
    img, box = resize(img, box, random.choice(scales))
    if random.random() < 0.8:
        for k in np.random.permutation(3):
            enhance = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[k]
            img = enhance(img).enhance(random.uniform(0.6, 1.4))
    if random.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    if random.random() < 0.5:
        img = F.hflip(img)
        box = box[[2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([img.width, 0, img.width, 0])
        text = text.replace("right", "*&^special^&*").replace("left", "right").replace("*&^special^&*", "left")
    tensor = F.normalize(F.to_tensor(img), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    h, w = tensor.shape[1:]
    top, left = random.randint(0, size - h), random.randint(0, size - w)
    canvas = torch.zeros(3, size, size)
    canvas[:, top:top + h, left:left + w] = tensor
    box = box + torch.tensor([left, top, left, top])
    pos_region = torch.zeros(size, size)
    x1, y1, x2, y2 = box.int().tolist()
    pos_region[y1:y2, x1:x2] = 1
    return canvas, torch.zeros(size, size).int(), pos_region, text


def time_per_sample(fn, n):
    for i in range(10):
        fn(i)
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e3


def epoch_ms_per_batch(loader, epoch):
    loader.batch_sampler.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    start = time.perf_counter()
    batches = sum(1 for _ in loader)
    return (time.perf_counter() - start) / batches * 1e3


def demo_loader(rounds):
    """Median ms per batch of the demo's training loader without and with --cache_data (filled)."""
    with tempfile.TemporaryDirectory() as tmp:
        demo_data.main(["--output_dir", tmp, "--train", "1280", "--val", "64", "--test", "64"])
        flags = [f"@{ROOT / 'tools' / 'demo_flags.txt'}", "--data_root", tmp, "--split_root", str(Path(tmp) / "split"),
                 "--device", "cpu"]
        loaders = {}
        for name, cache in (("plain", False), ("cache_data", True)):
            args = build_training_parser().parse_args(flags)
            args.cache_data = cache
            loaders[name] = build_loaders(args, build_tokenizer(args))[0]
        epoch_ms_per_batch(loaders["cache_data"], 0)
        times = {name: [] for name in loaders}
        for epoch in range(1, rounds + 1):
            for name, loader in loaders.items():
                times[name].append(epoch_ms_per_batch(loader, epoch))
    print(f"demo training loader (batches of {args.batch_size}, {args.imsize} px, main process, "
          f"{torch.get_num_threads()} threads), median of {rounds} epochs of 20 batches")
    for name, values in times.items():
        print(f"  {name:10s}: {np.median(values):6.2f} ms/batch  ({min(values):.2f}-{max(values):.2f})")
    print(f"  ratio cache_data / plain: {np.median(times['cache_data']) / np.median(times['plain']):.2f}")


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default=300, type=int, help="samples timed at 640")
    parser.add_argument("--demo", action="store_true", help="time the demo's training loader instead")
    parser.add_argument("--rounds", default=5, type=int, help="with --demo: epochs timed per variant")
    return parser


def main():
    opts = get_args_parser().parse_args()
    if opts.demo:
        demo_loader(opts.rounds)
        return
    torch.set_num_threads(1)  # what a DataLoader worker uses
    cv2.setNumThreads(1)
    random.seed(0)
    np.random.seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root)
        args = build_training_parser().parse_args([
            "--dataset", "unc", "--data_root", str(root / "images"), "--split_root", str(root / "split"),
            "--vocab_file", str(root / "vocab.txt"), "--imsize", "640", "--max_query_len", "40",
            "--aug_scale", "--aug_crop", "--aug_translate", "--aug_blur"])
        ds = build_dataset("train", args)
        n = min(opts.samples, len(ds))

        ours = time_per_sample(lambda i: ds[i], n)
        images = [ds.load_image(i) for i in range(n)]
        boxes = [np.float32(ds.sample_info(i)["box"]) for i in range(n)]
        ours_aug = time_per_sample(
            lambda i: ds.transform({"img": images[i % n], "box": boxes[i % n].copy(), "text": "dog"}), n)

        def original(i):
            info = ds.sample_info(i)
            img = Image.open(info["image"]).convert("RGB")
            return original_pipeline(img, torch.tensor(info["box"]), info["phrase"].lower())

        reference = time_per_sample(original, n)
        pil_images = [Image.fromarray(img) for img in images]
        reference_aug = time_per_sample(
            lambda i: original_pipeline(pil_images[i % n], torch.tensor(boxes[i % n]), "dog"), n)

    print(f"training pipeline at 640, all augmentations, {n} samples, one thread")
    print(f"  this implementation: {ours:6.2f} ms/sample  ({ours_aug:.2f} ms without decoding and tokenizing)")
    print(f"  original (PIL/torchvision): {reference:6.2f} ms/sample  ({reference_aug:.2f} ms without decoding)")


if __name__ == "__main__":
    main()
