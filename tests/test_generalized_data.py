"""Phrases with no target or several: the "boxes" records and their defects, what the loader and the transforms make
of them, the loss that skips no-target phrases, the presence head, and the demo's gref level."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import model_inputs, synthetic_batch, tiny_args, tiny_train_args, trained_weights, without_dropout
from PIL import Image

from datasets import build_dataset, collate_fn, demo, demo_gref, demo_scenes
from datasets.records import check_record
from datasets.transforms import NormalizeAndPad, RandomHorizontalFlip, RandomResize, RandomSizeCrop
from datasets.validate import validate
from models import build_criterion, build_model
from train import get_args_parser

IMAGE = "img.png"
SQUARE = [[2, 2, 2, 12, 12, 12, 12, 2]]  # a polygon filling [2, 2, 12, 12]
RECORDS = [
    {"image": IMAGE, "phrase": "the red square", "box": [2, 2, 12, 12], "mask": SQUARE},
    {"image": IMAGE, "phrase": "both squares", "boxes": [[2, 2, 12, 12], [20, 4, 30, 14]],
     "masks": [SQUARE, [[20, 4, 20, 14, 30, 14, 30, 4]]]},
    {"image": IMAGE, "phrase": "the purple circle", "boxes": []},
]
DEFECTS = [
    ({"box": [2, 2, 12, 12], "boxes": [[2, 2, 12, 12]]}, "both \"box\" and \"boxes\""),
    ({"boxes": [[2, 2, 12, 12]], "masks": [SQUARE, SQUARE]}, "\"masks\" has 2 entries for 1 boxes"),
    ({"boxes": [], "masks": [SQUARE]}, "a record with no target"),
    ({"boxes": [[2, 2, 12, 12]], "mask": SQUARE}, "\"mask\" goes with \"box\""),
    ({"box": [2, 2, 12, 12], "masks": [SQUARE]}, "\"masks\" goes with \"boxes\""),
    ({"boxes": [[2, 2, 12, 12], [5, 5, 5, 9]]}, "degenerate boxes[1]"),
    ({"boxes": [[2, 2, 12, 12], [30, 4, 50, 14]]}, "outside the 40x30 image"),
]


@pytest.fixture
def data(tmp_path):
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / IMAGE)
    folder = tmp_path / "split" / "mixed_kinds"
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        (folder / f"mixed_kinds_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return tmp_path


def test_records_of_each_kind_and_their_union_box():
    assert check_record(RECORDS[0])[1] == [2.0, 2.0, 12.0, 12.0]
    image, box, phrase, extra = check_record(RECORDS[1])
    assert box == [2.0, 2.0, 30.0, 14.0] and len(extra["boxes"]) == 2 and len(extra["masks"]) == 2
    assert check_record(RECORDS[2])[1] is None and check_record(RECORDS[2])[3]["boxes"] == []


def test_validator_names_each_new_defect_with_file_and_line(data, capsys):
    lines = [json.dumps({"image": IMAGE, "phrase": "p", **fields}) for fields, _ in DEFECTS]
    path = data / "split" / "bad" / "bad_train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join([json.dumps(RECORDS[1])] + lines) + "\n")
    problems = validate("bad", str(data), str(data / "split"))
    assert len(problems) == len(DEFECTS)
    for n, (_, message) in enumerate(DEFECTS, 2):
        assert any(p.startswith(f"{path}:{n}: ") and message in p for p in problems), (n, message, problems)
    assert validate("mixed_kinds", str(data), str(data / "split")) == []
    assert "(targets: 1 none, 1 one, 1 several)" in capsys.readouterr().out


def test_loader_targets_masks_and_canvas_regions(data):
    args = tiny_args("--dataset", "mixed_kinds", "--data_root", data, "--split_root", data / "split",
                     "--mask_supervision", "mask")
    dataset = build_dataset("val", args)
    assert [dataset.n_targets(i) for i in range(3)] == [1, 2, 0] and dataset.is_generalized()
    union = dataset.gt_mask(1)
    assert union.sum() == 200 and union[5, 5] and union[10, 25] and not union[20, 20]
    assert dataset.gt_mask(2).shape == (30, 40) and not dataset.gt_mask(2).any()
    batch = collate_fn([dataset[i] for i in range(3)])
    assert batch["n_targets"].tolist() == [1, 2, 0]
    scale = 64 / 40  # the long side to the 64 canvas, centred vertically
    top = round((64 - 30 * scale) / 2 - 0.1)
    region = batch["pos_region"][1]
    assert region.sum() == 2 * 16 * 16 and region[top + int(5 * scale), int(25 * scale)]
    assert not region[top + int(5 * scale), int(16 * scale)]  # between the two boxes: not a target
    assert not batch["pos_region"][2].any()
    cx, cy, w, h = (batch["target"][1] * 64).tolist()
    assert (w, h) == pytest.approx((28 * scale, 12 * scale))  # the union box


def test_transforms_move_every_target_box_with_the_image():
    random.seed(0)
    boxes = np.float32([[2, 2, 12, 12], [20, 4, 30, 14]])
    sample = {"img": np.zeros((30, 40, 3), np.uint8), "box": np.float32([2, 2, 30, 14]), "boxes": boxes.copy(),
              "text": "both squares on the left"}
    sample = RandomHorizontalFlip(p=1.0)(RandomResize([80])(sample))
    np.testing.assert_allclose(sample["boxes"], [[80 - 24, 4, 80 - 4, 24], [80 - 60, 8, 80 - 40, 28]])
    assert sample["text"] == "both squares on the right"
    for _ in range(20):  # a crop keeps at least half of each target
        cropped = RandomSizeCrop(20, 60)(dict(sample, boxes=sample["boxes"].copy()))
        areas = (cropped["boxes"][:, 2] - cropped["boxes"][:, 0]) * (cropped["boxes"][:, 3] - cropped["boxes"][:, 1])
        assert (areas >= 0.5 * 400 - 1e-3).all()
    empty = {"img": np.zeros((30, 40, 3), np.uint8), "box": np.zeros(4, np.float32),
             "boxes": np.zeros((0, 4), np.float32), "text": "the purple circle"}
    assert RandomSizeCrop(10, 20)(empty)["img"].shape == (30, 40, 3)  # nothing to keep: not cropped
    out = NormalizeAndPad(64)(RandomHorizontalFlip(p=1.0)(empty))
    assert not out["pos_region"].any()


@pytest.mark.parametrize("mask_head", ["grid", "fine"])
def test_no_target_phrases_add_nothing_to_box_and_mask_terms(mask_head):
    args = tiny_args("--presence_head", "--mask_head", mask_head, "--presence_loss_coef", "2")
    torch.manual_seed(0)
    model = without_dropout(build_model(args)).train()
    criterion = build_criterion(args)
    batch = synthetic_batch(args, batch=3)
    batch["n_targets"] = torch.tensor([1, 0, 3])
    outputs = model(batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"])
    losses = criterion(outputs, batch["target"], batch["pos_region"], batch)
    # Changing what the no-target sample's box and region say changes nothing.
    moved = dict(batch, target=batch["target"].clone(), pos_region=batch["pos_region"].clone())
    moved["target"][1] = torch.tensor([0.3, 0.3, 0.1, 0.1])
    moved["pos_region"][1] = ~moved["pos_region"][1]
    again = criterion(outputs, moved["target"], moved["pos_region"], moved)
    for key in losses:
        assert again[key].item() == pytest.approx(losses[key].item(), rel=1e-6), key
    # The presence term: binary cross-entropy on "has a target", times its coefficient.
    logits = outputs["presence_logits"].detach()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 1.0]))
    assert losses["loss_presence"].item() == pytest.approx(2 * expected.item(), rel=1e-5)


def test_presence_head_leaves_the_rest_of_the_model_as_without_it():
    torch.manual_seed(0)
    plain = build_model(tiny_args())
    torch.manual_seed(0)
    with_head = build_model(tiny_args("--presence_head"))
    heads = {k for k in with_head.state_dict() if k.startswith("presence_head.")}
    assert heads and set(with_head.state_dict()) - heads == set(plain.state_dict())
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(with_head.state_dict()[key], value)


@pytest.mark.parametrize("gradient", ["shared", "head"])
def test_presence_gradient_head_trains_the_head_alone(gradient):
    args = tiny_args("--presence_head", "--presence_gradient", gradient)
    model = without_dropout(build_model(args))
    model(*model_inputs(synthetic_batch(args, batch=2)))["presence_logits"].sum().backward()
    reached = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "presence_head" in reached
    assert (reached == {"presence_head"}) == (gradient == "head"), reached


def test_a_detached_presence_head_leaves_the_box_training_as_without_it():
    """--presence_gradient head: from the same seed, with gradient clipping on, every other weight ends where a run
    without the head ends; a shared head's loss moves them."""
    def trained(*extra):
        args = tiny_train_args("--clip_max_norm", "0.1", *extra)
        return trained_weights(args, [dict(synthetic_batch(args, 4, seed=k), n_targets=torch.tensor([1, 0, 2, 1]))
                                      for k in range(3)])

    plain = trained()
    detached = trained("--presence_head", "--presence_gradient", "head")
    shared = trained("--presence_head", "--presence_gradient", "shared")
    for name, value in plain.items():
        assert torch.equal(detached[name], value), name
    assert any(not torch.equal(shared[name], value) for name, value in plain.items())


def test_gref_demo_phrases_name_exactly_their_targets(tmp_path):
    rng = random.Random(5)
    kinds = set()
    for _ in range(60):
        image, labels, objects = demo_scenes.draw_scene(rng, "gref")
        extent = (image.shape[1], image.shape[0])
        for kind in ("none", "several", "one"):
            ref = demo_gref._reference(rng, objects, extent, kind)
            if ref is None:
                continue
            targets, phrase, kind_written = ref
            kinds.add(kind_written)
            assert demo_gref.resolve_set(phrase, objects, *extent) == targets
            assert (len(targets), kind) in {(0, "none"), (1, "one")} or (len(targets) >= 2 and kind == "several")
            if kind == "none":  # misleading or absent: never an object with both of the phrase's attributes
                words = phrase.split()
                assert not any(o.colour == words[1] and o.shape == words[2].rstrip("s") for o in objects)
    assert {"none", "several", "colour", "shape", "position"} <= kinds
    # The reader refuses a count that does not fit.
    circle = demo_scenes.Obj("circle", "red", "large", (0, 0, 10, 10))
    assert demo_gref.resolve_set("both circles", [circle] * 3, 50, 50) is None
    demo.main(["--output_dir", str(tmp_path), "--level", "gref", "--seed", "1", "--train", "40", "--val", "20",
               "--test", "20", "--no_target_share", "0.5", "--several_share", "0.25"])
    assert validate("demo_gref", str(tmp_path), str(tmp_path / "split")) == []
    records = [json.loads(line) for line in (tmp_path / "split/demo_gref/demo_gref_train.jsonl").open()]
    assert len(records) == 40 and 10 <= sum(not r["boxes"] for r in records) <= 30
    args = get_args_parser().parse_args(["--dataset", "demo_gref", "--data_root", str(tmp_path), "--split_root",
                                         str(tmp_path / "split"), "--imsize", "64", "--max_query_len", "12"])
    dataset = build_dataset("train", args)
    for i, record in enumerate(records):
        mask = dataset.gt_mask(i)
        assert mask.any() == bool(record["boxes"])
        for x1, y1, x2, y2 in record["boxes"]:
            assert mask[int(y1):int(y2), int(x1):int(x2)].any()


def test_gref_demo_is_the_same_whatever_the_hash_seed(tmp_path):
    """Two interpreters with other string hashes write the same files (no draw depends on a set's order)."""
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-m", "datasets.demo", "--output_dir", str(tmp_path / seed), "--level", "gref",
                        "--train", "300", "--val", "1", "--test", "1"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    path = "split/demo_gref/demo_gref_train.jsonl"
    assert (tmp_path / "1" / path).read_text() == (tmp_path / "2" / path).read_text()

