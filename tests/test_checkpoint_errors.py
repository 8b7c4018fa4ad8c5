"""Bad checkpoints give one line naming the file and what is wrong, in train.py, eval.py and predict.py; a failed
save keeps the previous checkpoint, the epoch's log line and config.json."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, tiny_args
from PIL import Image

import eval as eval_script
import predict
import train
from datasets import build_tokenizer, demo
from models import build_model
from models.checkpoint import CheckpointError, json_config, tokenizer_info
from utils.files import FileWriteError, atomic_save

ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    def __reduce__(self):
        return os.system, ("echo this should never run",)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    data = root / "demo"
    demo.main(["--output_dir", str(data), "--seed", "4", "--train", "16", "--val", "4", "--test", "4"])
    args = tiny_args("--dataset", "demo", "--data_root", str(data), "--split_root", str(data / "split"))
    args.bert_vocab_size = len(build_tokenizer(args))
    good = root / "good.pth"
    model = build_model(args)
    atomic_save({"model": model.state_dict(), "args": json_config(args),
                 "tokenizer": tokenizer_info(build_tokenizer(args), args)}, good)
    data_bytes = good.read_bytes()
    (root / "truncated.pth").write_bytes(data_bytes[:len(data_bytes) // 3])
    torch.save({"model": model.state_dict(), "payload": RunsCode()}, root / "code.pth")
    # Weights of another configuration (a wider model) under this configuration's arguments.
    wide = build_model(tiny_args("--dataset", "demo", "--vl_hidden_dim", "64", "--bert_vocab_size",
                                 str(args.bert_vocab_size)))
    atomic_save({"model": wide.state_dict(), "args": json_config(args),
                 "tokenizer": tokenizer_info(build_tokenizer(args), args)}, root / "other_config.pth")
    image = root / "image.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    return {"root": root, "data": data, "image": image}


CASES = {
    "truncated.pth": r"truncated\.pth is truncated or corrupt: ",
    "code.pth": r"code\.pth holds Python objects other than tensors and plain data \(GLOBAL posix\.system\); "
                r"refusing to load it, it could run code",
    "other_config.pth": r"other_config\.pth does not fit this model configuration \(.*shape mismatch",
}


def train_args(files, output_dir, *extra):
    data = files["data"]
    return train.get_args_parser().parse_args(TINY_TRAIN + [
        "--dataset", "demo", "--data_root", str(data), "--split_root", str(data / "split"), "--output_dir",
        str(output_dir), "--epochs", "1", *extra])


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_script_names_the_file_and_the_problem(files, name, tmp_path):
    path = files["root"] / name
    with pytest.raises(CheckpointError, match=CASES[name]):
        predict.main(["--checkpoint", str(path), "--image", str(files["image"]), "--phrase", "the red one"])
    args = eval_script.get_args_parser().parse_args(["--eval_model", str(path), "--output_dir", str(tmp_path)])
    with pytest.raises(CheckpointError, match=CASES[name]):
        eval_script.main(args)
    extra = ()
    if name == "other_config.pth":  # a training checkpoint of another configuration, resumed with this one
        train.main(train_args(files, tmp_path / "wide", "--vl_hidden_dim", "64"))
        path = tmp_path / "wide" / "checkpoint_latest.pth"
        with pytest.raises(ValueError, match=r"trained with other model or dataset flags \(--vl_hidden_dim 64 -> 32\)"):
            train.main(train_args(files, tmp_path / "run", "--resume", str(path)))
        extra = ("--allow_flag_changes",)  # told to go on: the weights then say they do not fit
    with pytest.raises(CheckpointError, match=CASES[name].replace(name.replace(".", r"\."), "")):
        train.main(train_args(files, tmp_path / "run", "--resume", str(path), *extra))


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py"])
def test_command_line_prints_one_line_and_fails(files, script, tmp_path):
    bad = str(files["root"] / "truncated.pth")
    data = files["data"]
    arguments = {
        "train.py": [*TINY_TRAIN, "--dataset", "demo", "--data_root", str(data), "--split_root",
                     str(data / "split"), "--output_dir", str(tmp_path), "--resume", bad],
        "eval.py": ["--checkpoint", bad, "--output_dir", str(tmp_path)],
        "predict.py": ["--checkpoint", bad, "--image", str(files["image"]), "--phrase", "the red one"],
    }[script]
    result = subprocess.run([sys.executable, script, *arguments], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {bad} is truncated or corrupt: PytorchStreamReader failed reading zip archive: "
                     f"failed finding central directory; write it again or use another checkpoint"], result.stderr


def test_disk_full_keeps_the_previous_checkpoint_the_log_and_the_config(files, tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    train.main(train_args(files, output_dir))
    before = (output_dir / "checkpoint_latest.pth").read_bytes()
    save = torch.save

    def full_disk(obj, f, *a, **k):
        save(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(FileWriteError, match=r"cannot write .*checkpoint_latest\.pth: no space left on device; "
                                              r"the previous checkpoint is kept"):
        train.main(train_args(files, output_dir, "--auto_resume", "--epochs", "2"))
    assert (output_dir / "checkpoint_latest.pth").read_bytes() == before
    assert sorted(p.name for p in output_dir.iterdir()) == [".lock", "best_checkpoint.pth", "checkpoint_latest.pth",
                                                             "config.json", "log.txt"]
    log = [json.loads(line) for line in (output_dir / "log.txt").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1]
    assert json.loads((output_dir / "config.json").read_text())["epochs"] == 2
