"""The built-in demo dataset: deterministic, unambiguous, flip-consistent, readable by the real loader."""
import io
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import build_dataset, collate_fn, demo, demo_scenes
from datasets.transforms import swap_left_right
from datasets.validate import validate
from train import get_args_parser

COUNTS = ["--train", "60", "--val", "10", "--test", "10"]


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
    """{level: folder} of small generated demo datasets."""
    dirs = {}
    for level in ("easy", "hard"):
        out = tmp_path_factory.mktemp(f"demo_{level}")
        demo.main(["--output_dir", str(out), "--level", level, "--seed", "3", *COUNTS])
        dirs[level] = out
    return dirs


def entries(out, split="train"):
    return torch.load(out / "split" / "demo" / f"demo_{split}.pth", weights_only=True)


def mirrored(objects, width):
    return [demo_scenes.Obj(o.shape, o.colour, o.size, (width - o.box[2], o.box[1], width - o.box[0], o.box[3]))
            for o in objects]


@pytest.mark.parametrize("level", ["easy", "hard"])
def test_every_expression_picks_exactly_its_target_also_when_flipped(level):
    rng = random.Random(7)
    kinds = Counter()
    for _ in range(400):
        image, labels, objects = demo_scenes.draw_scene(rng, level)
        height, width = labels.shape
        for target, phrase, kind in demo_scenes.refer(rng, objects, (width, height), level, 2):
            kinds[kind] += 1
            assert demo_scenes.resolve(phrase, objects, width, height) == [target], phrase
            flipped = swap_left_right(phrase, "word")
            assert demo_scenes.resolve(flipped, mirrored(objects, width), width, height) == [target], flipped
            assert swap_left_right(phrase, "legacy") == flipped  # the grammar has no "bright"-like words
    assert set(kinds) == set(demo_scenes.LEVELS[level]["types"])
    assert min(kinds.values()) > 0.7 * max(kinds.values()), kinds  # roughly equal shares


def test_scene_geometry():
    rng = random.Random(0)
    for _ in range(50):
        image, labels, objects = demo_scenes.draw_scene(rng, "easy")
        height, width = labels.shape
        assert 64 <= width <= 96 and 64 <= height <= 96
        assert len(objects) == 3
        assert len({o.colour for o in objects}) == 3 and len({o.shape for o in objects}) == 3
        for k, obj in enumerate(objects):
            ys, xs = np.nonzero(labels == k + 1)
            assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            side = max(obj.box[2] - obj.box[0], obj.box[3] - obj.box[1])
            assert 0.25 * min(width, height) - 1 <= side <= 0.40 * min(width, height) + 1
            colour = image[labels == k + 1].mean(axis=0)
            nearest = min(demo_scenes.COLOURS, key=lambda c: np.abs(np.array(demo_scenes.COLOURS[c]) - colour).sum())
            assert nearest == obj.colour


def test_generation_is_deterministic(tmp_path, demo_dirs):
    out = tmp_path / "again"
    demo.main(["--output_dir", str(out), "--level", "easy", "--seed", "3", *COUNTS])
    first = demo_dirs["easy"]
    for split in ("train", "val", "test"):
        assert entries(out, split) == entries(first, split)
    for name in ("train_000000.png", "val_000003.png"):
        for sub in ("images", "masks"):
            assert (out / "demo" / sub / name).read_bytes() == (first / "demo" / sub / name).read_bytes()
    other = tmp_path / "other_seed"
    demo.main(["--output_dir", str(other), "--seed", "4", *COUNTS])
    assert entries(other) != entries(first)


@pytest.mark.parametrize("level", ["easy", "hard"])
def test_written_files_match_the_index(level, demo_dirs):
    out = demo_dirs[level]
    rows = entries(out)
    assert len(rows) == 60 and len(entries(out, "val")) == 10
    types = set(demo_scenes.LEVELS[level]["types"])
    for file_name, label, (x, y, w, h), phrase, kind in rows:
        assert kind in types and phrase
        labels = np.asarray(Image.open(out / "demo" / "masks" / file_name))
        ys, xs = np.nonzero(labels == label)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert validate("demo", out, out / "split", out=io.StringIO()) == []


@pytest.mark.parametrize("level", ["easy", "hard"])
def test_real_loader_reads_the_demo(level, demo_dirs):
    out = demo_dirs[level]
    args = get_args_parser().parse_args([
        "--dataset", "demo", "--data_root", str(out), "--split_root", str(out / "split"), "--imsize", "64",
        "--max_query_len", "16", "--aug_scale", "--aug_crop", "--aug_translate"])
    train = build_dataset("train", args)
    info = train.sample_info(0)
    assert info["expr_type"] in demo_scenes.LEVELS[level]["types"]
    mask = train.instance_mask(0)
    ys, xs = np.nonzero(mask)
    assert info["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    batch = collate_fn([train[i] for i in range(4)])
    assert batch["img"].shape == (4, 3, 64, 64) and batch["pos_region"].shape == (4, 64, 64)
    tokenizer = train.tokenizer
    for i in range(len(train)):
        assert "[UNK]" not in tokenizer.tokenize(train.sample_info(i)["phrase"])
    val = build_dataset("val", args)
    x1, y1, x2, y2 = val.sample_info(0)["box"]
    height, width = val.load_image(0).shape[:2]
    ratio = 64 / max(width, height)
    cx, cy, w, h = val[0]["target"].tolist()
    assert abs(w * 64 - (x2 - x1) * ratio) < 1e-3 and abs(h * 64 - (y2 - y1) * ratio) < 1e-3
