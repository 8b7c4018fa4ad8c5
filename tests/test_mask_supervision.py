"""--mask_supervision: under "box" (the default) no mask file is ever read; under "mask" the true masks travel through
the training augmentation (resize, crop, flip, padding) with the image and its box, and train the fine head."""
import json

import numpy as np
import pytest
import torch
from helpers import tiny_train_args
from PIL import Image

import train
from datasets import build_dataset, build_tokenizer, collate_fn, demo
from datasets.grounding import GroundingDataset
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from tools import pairwise_threshold


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    demo.main(["--output_dir", str(root), "--seed", "2", "--train", "48", "--val", "4", "--test", "4"])
    return root


def demo_args(root, *extra):
    args = tiny_train_args("--dataset", "demo", "--data_root", str(root), "--split_root", str(root / "split"),
                           "--mask_head", "fine", "--imsize", "64", "--aug_scale", "--aug_translate", "--aug_crop",
                           *extra)
    args.bert_vocab_size = len(build_tokenizer(args))
    return args


def test_box_supervision_never_reads_a_mask(demo_root, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a mask was read under --mask_supervision box")

    monkeypatch.setattr(GroundingDataset, "gt_mask", refuse)
    monkeypatch.setattr(GroundingDataset, "instance_mask", refuse)
    monkeypatch.setattr(Image, "open", refuse)  # the demo's masks are PNGs; its images are read by OpenCV
    dataset = build_dataset("train", demo_args(demo_root))
    batch = collate_fn([dataset[i] for i in range(8)])
    assert "gt_mask" not in batch and "has_mask" not in batch
    with pytest.raises(AssertionError, match="a mask was read"):  # the trap is armed
        build_dataset("train", demo_args(demo_root, "--mask_supervision", "mask"))[0]


def test_true_masks_follow_the_augmentation(demo_root, monkeypatch):
    """Each image replaced by its own mask drawn white on black: after resizing, cropping, flipping and translating,
    the canvas must show exactly the sample's gt_mask."""
    def mask_as_image(self, idx, _file_name):
        return np.repeat(self.gt_mask(idx)[..., None], 3, axis=2).astype(np.uint8) * 255

    monkeypatch.setattr(GroundingDataset, "_read", mask_as_image)
    dataset = build_dataset("train", demo_args(demo_root, "--mask_supervision", "mask", "--color_jitter", "0"))
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    left_halves = 0
    for idx in range(len(dataset)):
        sample = dataset[idx]
        gt = sample["gt_mask"]
        drawn = (sample["img"] * std + mean).mean(0) * 255 >= 127.5
        assert sample["has_mask"] and gt.any()
        assert torch.equal(gt, drawn), idx
        rect = sample["image_rect"].tolist()
        assert not gt[:, :rect[0]].any() and not gt[:, rect[2]:].any() and not gt[:rect[1]].any()  # not on padding
        left_halves += gt[:, :32].sum() > gt[:, 32:].sum()
    assert 0 < left_halves < len(dataset)


def test_mask_supervision_needs_masks(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "a.png")
    (tmp_path / "split" / "mine").mkdir(parents=True)
    (tmp_path / "split" / "mine" / "mine_train.jsonl").write_text(
        json.dumps({"image": "a.png", "phrase": "the thing", "box": [2, 2, 10, 10]}) + "\n")
    args = tiny_train_args("--dataset", "mine", "--data_root", str(tmp_path / "images"), "--split_root",
                           str(tmp_path / "split"), "--mask_head", "fine", "--mask_supervision", "mask")
    with pytest.raises(ValueError, match="no sample of mine/train has a mask"):
        build_dataset("train", args)


def test_training_on_true_masks_logs_their_terms(demo_root, tmp_path):
    args = demo_args(demo_root, "--mask_supervision", "mask", "--max_steps", "2", "--output_dir",
                     str(tmp_path / "out"), "--lr_scheduler", "cosine_iter", "--freeze_epochs", "0")
    train.main(args)
    log = json.loads((tmp_path / "out" / "log.txt").read_text().splitlines()[-1])
    assert log["train_loss_mask_dice"] > 0 and log["train_loss_mask_focal"] > 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mask_supervision"] == "mask"


def test_pairwise_threshold_tool_counts_the_pairs_of_a_split_with_masks(demo_root, tmp_path, capsys):
    flags = ["--dataset", "demo", "--data_root", str(demo_root), "--split_root", str(demo_root / "split"),
             "--imsize", "64", "--num_workers", "0"]
    pairwise_threshold.main(["--samples", "20", "--thresholds", "0.3", "0.1", "--", *flags])
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in capsys.readouterr().out.splitlines()
            if line.split()[0] in ("object", "background", "across")}
    assert set(rows) == {"object", "background", "across"}
    assert sum(row[0] for row in rows.values()) == pytest.approx(1, abs=2e-3)  # the shares, printed to 3 places
    for row in rows.values():
        assert 0 <= row[1] <= row[2] <= 1  # a lower threshold counts at least the same pairs
    # The demo's flat colours: alike cells agree, the outline is crossed by (almost) no counted pair.
    assert rows["object"][1] > 0.5 and rows["background"][1] > 0.5 and rows["across"][2] < 0.05
    # Without masks: one line that says so.
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "a.png")
    (tmp_path / "split" / "mine").mkdir(parents=True)
    (tmp_path / "split" / "mine" / "mine_train.jsonl").write_text(
        json.dumps({"image": "a.png", "phrase": "the thing", "box": [2, 2, 10, 10]}) + "\n")
    with pytest.raises(SystemExit, match="no sample of mine/train has a mask"):
        pairwise_threshold.main(["--", "--dataset", "mine", "--data_root", str(tmp_path / "images"),
                                 "--split_root", str(tmp_path / "split")])
