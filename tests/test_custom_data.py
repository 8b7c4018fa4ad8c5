"""Your own data end to end: datasets written as CSV, ODVG and JSONL (with masks) are converted and validated, a
validator names every planted defect with its file and line, a JSONL dataset trains (and resumes), evaluates and
predicts on a folder, and --pretrained starts a fine-tuning run from a checkpoint's weights."""
import json

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN
from PIL import Image

import eval as eval_script
import predict
import train
from datasets import build_index, objects
from datasets.records import RecordError
from datasets.validate import validate
from inference import SegVGPredictor
from models.checkpoint import CheckpointError, safe_load

COUNTS = ["--train", "24", "--val", "8", "--test", "8"]


def build(opts):
    with pytest.raises(SystemExit) as exit_info:
        build_index.main(opts)
    return exit_info.value.code


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same kind of data in the three formats, converted into three JSONL datasets under one split root."""
    root = tmp_path_factory.mktemp("custom")
    split_root = root / "split"
    for fmt in ("jsonl", "csv", "odvg"):
        objects.main(["--output_dir", str(root), "--name", f"from_{fmt}", "--format", fmt, "--seed", "1", *COUNTS])
    for split in ("train", "val", "test"):
        assert build(["csv", "--csv", str(root / f"from_csv_{split}.csv"), "--dataset", "from_csv", "--split", split,
                      "--split_root", str(split_root), "--data_root", str(root)]) == 0
        assert build(["odvg", "--odvg", str(root / f"from_odvg_{split}.odvg.jsonl"), "--dataset", "from_odvg",
                      "--split", split, "--split_root", str(split_root), "--data_root", str(root)]) == 0
    return root


def train_args(data, output_dir, dataset="from_jsonl", *extra):
    return train.get_args_parser().parse_args(TINY_TRAIN + [
        "--dataset", dataset, "--data_root", str(data), "--split_root", str(data / "split"), "--output_dir",
        str(output_dir), "--epochs", "1", *map(str, extra)])


def test_converted_datasets_hold_the_generated_records(data):
    original = [json.loads(line) for line in (data / "split" / "from_jsonl" / "from_jsonl_test.jsonl").open()]
    assert len(original) == 8 and all("mask" in r and "type" in r for r in original)
    for name in ("from_csv", "from_odvg"):
        converted = [json.loads(line) for line in (data / "split" / name / f"{name}_test.jsonl").open()]
        assert [(r["phrase"], r["box"]) for r in converted] == [(r["phrase"], r["box"]) for r in original]
    assert [r["type"] for r in map(json.loads, (data / "split" / "from_csv" / "from_csv_test.jsonl").open())] == [
        r["type"] for r in original]
    assert not validate("from_jsonl", str(data), str(data / "split"))  # polygon masks checked against the images


def test_builtin_index_rewritten_as_jsonl_loads_the_same_samples(tmp_path):
    from datasets import demo
    from datasets.grounding import GroundingDataset
    demo.main(["--output_dir", str(tmp_path), "--train", "6", "--val", "2", "--test", "2"])
    assert build(["jsonl", "--dataset", "demo", "--split_root", str(tmp_path / "split"), "--out_dataset", "demo2",
                  "--data_root", str(tmp_path)]) == 0
    for name in ("demo", "demo2"):
        dataset = GroundingDataset(tmp_path, tmp_path / "split", name, "train", None, None, 8)
        info = [dataset.sample_info(i) for i in range(len(dataset))]
        if name == "demo":
            expected = [(i["image"], i["phrase"], i["box"], i["expr_type"]) for i in info]
    assert [(i["image"], i["phrase"], i["box"], i["expr_type"]) for i in info] == expected


DEFECTS = [
    ('{"image": "a.png", "phrase": "x", "box": [1, 2, 3', "malformed JSON"),
    ('{"phrase": "the pink star", "box": [1, 2, 30, 40]}', "missing key 'image'"),
    ('{"image": "IMG", "phrase": "the pink star", "box": [1, 2, 30]}', "box must be four numbers"),
    ('{"image": "IMG", "phrase": "the pink star", "box": [30, 2, 10, 40]}', "degenerate box"),
    ('{"image": "IMG", "phrase": "the pink star", "box": [1, 2, 3000, 40]}', "outside the"),
    ('{"image": "IMG", "phrase": "  ", "box": [1, 2, 30, 40]}', "empty phrase"),
    ('{"image": "nowhere.png", "phrase": "x", "box": [1, 2, 30, 40]}', "nowhere.png not found"),
    ('{"image": "broken.png", "phrase": "x", "box": [1, 2, 30, 40]}', "unreadable image"),
    ('{"image": "IMG", "phrase": "x", "box": [1, 2, 30, 40], "mask": [[1, 2, 3, 4]]}', "has 2 points"),
    ('{"image": "IMG", "phrase": "x", "box": [1, 2, 30, 40], "mask": [[1, 2, 3, 4, 5]]}', "odd number of coordinates"),
    ('{"image": "IMG", "phrase": "x", "box": [1, 2, 30, 40], "mask": {"size": [5, 5], "counts": [25]}}',
     "the RLE's size [5, 5] is not the image's"),
    ('{"image": "IMG", "phrase": "x", "box": [1, 2, 30, 40], "mask": [[1, 2, 900, 4, 5, 6]]}',
     "a polygon lies outside"),
]


def test_validator_names_each_planted_defect_with_file_and_line(data, tmp_path, capsys):
    image = json.loads((data / "split" / "from_jsonl" / "from_jsonl_train.jsonl").open().readline())["image"]
    (data / "broken.png").write_bytes(b"not a png")
    good = f'{{"image": "{image}", "phrase": "the pink star", "box": [1, 2, 30, 40]}}'
    lines = [good] + [line.replace("IMG", image) for line, _ in DEFECTS] + [good]
    path = tmp_path / "split" / "bad" / "bad_train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    problems = validate("bad", str(data), str(tmp_path / "split"))
    assert len(problems) == len(DEFECTS)
    for n, (_, message) in enumerate(DEFECTS, 2):
        assert any(p.startswith(f"{path}:{n}: ") and message in p for p in problems), (n, message, problems)
    # Training stops at the first bad record with the same kind of line, before any step.
    with pytest.raises(RecordError, match=rf"^{path}:2: malformed JSON"):
        train.main(train_args(data, tmp_path / "run", "bad", "--split_root", tmp_path / "split"))


def test_train_resume_evaluate_and_predict_a_folder(data, tmp_path, capsys):
    train.main(train_args(data, tmp_path / "run", "from_jsonl", "--max_steps", 2, "--epochs", 10))
    train.main(train_args(data, tmp_path / "run", "from_jsonl", "--max_steps", 4, "--epochs", 10, "--auto_resume"))
    assert "resumed from" in capsys.readouterr().out
    checkpoint = tmp_path / "run" / "checkpoint_latest.pth"
    assert safe_load(checkpoint)["step"] == 4
    assert safe_load(checkpoint)["tokenizer"]["source"] == "bert-base-uncased"

    stats = eval_script.main(eval_script.get_args_parser().parse_args([
        "--checkpoint", str(checkpoint), "--eval_set", "test", "--device", "cpu", "--num_workers", "0",
        "--save_predictions", str(tmp_path / "preds.jsonl")]))
    assert stats["count"] == 8 and set(stats["by_type"]) <= {"colour", "shape", "both", "position"}
    assert sum(s["count"] for s in stats["by_type"].values()) == 8

    folder = tmp_path / "photos"
    folder.mkdir()
    for k, name in enumerate(sorted((data / "from_jsonl" / "images").iterdir())[:3]):
        Image.open(name).save(folder / f"photo_{k}.png")
    (folder / "photo_9.png").write_bytes(b"corrupt")
    phrases = ["the pink star", "the lowest item"]
    out = tmp_path / "out"
    command = ["--checkpoint", str(checkpoint), "--images", str(folder), "--phrase", phrases[0], "--phrase",
               phrases[1], "--output_dir", str(out), "--save_masks", "--visualize", "2", "--batch_size", "4",
               "--device", "cpu"]
    predict.main(command)
    assert "skipped" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and len(list((out / "masks").iterdir())) == 6
    assert len(list((out / "overlays").iterdir())) == 2
    single = SegVGPredictor.from_checkpoint(checkpoint, device="cpu")
    for record in records:
        alone = single(record["image"], record["phrase"])
        np.testing.assert_allclose(record["box"], alone["box"], atol=0.02)
        with Image.open(record["mask"]) as mask:
            assert mask.size == tuple(record["image_size"])
            np.testing.assert_array_equal(np.asarray(mask) > 0, alone["mask"] > 0.5)
    with pytest.raises(ValueError, match="already exist"):
        predict.main(command)
    predict.main(command + ["--overwrite"])


def test_pretrained_initialises_every_weight_and_its_configuration(data, tmp_path):
    train.main(train_args(data, tmp_path / "first", "from_jsonl", "--max_steps", 2, "--epochs", 10))
    first = safe_load(tmp_path / "first" / "checkpoint_latest.pth")
    # Another model width on the command line: the checkpoint's configuration wins unless the flag is explicit.
    frozen = ["--lr", 0, "--lr_bert", 0, "--lr_visu_cnn", 0, "--lr_visu_tra", 0, "--max_steps", 1, "--weight_decay", 0]
    best_path = tmp_path / "first" / "best_checkpoint.pth"
    args = train_args(data, tmp_path / "second", "from_odvg", "--pretrained", best_path, "--vl_hidden_dim", 64, *frozen)
    train.main(args)
    second = safe_load(tmp_path / "second" / "checkpoint_latest.pth")
    assert second["step"] == 1 and second["args"]["vl_hidden_dim"] == 32
    best = safe_load(tmp_path / "first" / "best_checkpoint.pth")["model"]
    for name, value in best.items():  # nothing trained (every lr is 0): the weights are the checkpoint's
        assert torch.equal(second["model"][name], value), name
    assert first["tokenizer"]["vocab"] == second["tokenizer"]["vocab"]

    explicit = train_args(data, tmp_path / "third", "from_odvg", "--pretrained", best_path, "--imsize", 96)
    with pytest.raises(CheckpointError, match="does not fit this model configuration"):
        train.main(explicit, explicit={"imsize"})
