"""Several splits in one evaluation: --eval_set a,b and --eval_sets DATASET:SPLIT,... load the model once, write each
split's report exactly as a single-split run does, one summary beside them, and work under torchrun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import spawn, tiny_args

from datasets import build_tokenizer, demo
from eval import get_args_parser, main
from models import build_model
from models.checkpoint import json_config, tokenizer_info
from utils.files import atomic_save

SPLITS = ("val", "test")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    demo.main(["--output_dir", str(root / "demo"), "--seed", "6", "--train", "4", "--val", "7", "--test", "9"])
    args = tiny_args("--dataset", "demo")
    args.bert_vocab_size = len(build_tokenizer(args))
    torch.manual_seed(0)
    atomic_save({"model": build_model(args).state_dict(), "args": json_config(args),
                 "tokenizer": tokenizer_info(build_tokenizer(args), args)}, root / "ckpt.pth")
    return root


def flags(root, out, *extra):
    return ["--checkpoint", str(root / "ckpt.pth"), "--device", "cpu", "--num_workers", "0", "--data_root",
            str(root / "demo"), "--split_root", str(root / "demo" / "split"), "--output_dir", str(out), *extra]


def run(root, out, *extra):
    return main(get_args_parser().parse_args(flags(root, out, *extra)))


def report(path):
    """A split's report without what differs between two runs (the mask refinement's timing)."""
    data = json.loads(path.read_text())
    data.pop("mask_refine", None)
    return data


@pytest.mark.parametrize("how", ["eval_set", "eval_sets"])
def test_several_splits_write_what_single_runs_write(setup, tmp_path, how, capsys):
    single = {split: run(setup, tmp_path / split, "--eval_set", split) for split in SPLITS}
    chosen = ["--eval_set", ",".join(SPLITS)] if how == "eval_set" else ["--eval_sets", "demo:val,demo:test"]
    summary = run(setup, tmp_path / "both", *chosen, "--save_predictions", str(tmp_path / "preds.jsonl"))
    assert list(summary) == ["demo:val", "demo:test"]
    for split in SPLITS:
        assert summary[f"demo:{split}"]["count"] == single[split]["count"] == (7 if split == "val" else 9)
        assert report(tmp_path / "both" / f"eval_demo_{split}.json") == report(tmp_path / split / f"eval_demo_{split}.json")
        records = (tmp_path / f"preds_demo_{split}.jsonl").read_text().splitlines()
        assert len(records) == single[split]["count"]
    written = json.loads((tmp_path / "both" / "eval_summary.json").read_text())
    assert list(written["splits"]) == ["demo:val", "demo:test"]
    assert written["splits"]["demo:test"]["accu"] == single["test"]["accu"]
    table = capsys.readouterr().out
    assert "| demo:val |" in table and "| demo:test |" in table


def test_bad_split_lists_are_one_clear_error(setup, tmp_path):
    with pytest.raises(ValueError, match="drop --eval_set and --dataset"):
        run(setup, tmp_path, "--eval_sets", "demo:val", "--eval_set", "test")
    with pytest.raises(ValueError, match="write DATASET:SPLIT"):
        run(setup, tmp_path, "--eval_sets", "demo:val,test")
    with pytest.raises(ValueError, match="repeated"):
        run(setup, tmp_path, "--eval_set", "val,val")


def eval_worker(rank, world_size, root, out):
    summary = run(root, out, "--eval_set", ",".join(SPLITS))
    if rank == 0:
        torch.save({name: stats["accu"] for name, stats in summary.items()}, out / "accu.pt")


def test_several_splits_under_two_processes(setup, tmp_path):
    out = tmp_path / "two"
    out.mkdir()
    spawn(eval_worker, 2, setup, out)
    accuracies = torch.load(out / "accu.pt", weights_only=True)
    alone = run(setup, tmp_path / "one", "--eval_set", ",".join(SPLITS))
    assert accuracies == {name: stats["accu"] for name, stats in alone.items()}
    for split in SPLITS:
        assert report(out / f"eval_demo_{split}.json")["count"] == alone[f"demo:{split}"]["count"]


def test_test_sh_takes_eval_sets(setup, tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "EVAL_SETS": "demo:val,demo:test", "CHECKPOINT": str(setup / "ckpt.pth"),
           "DATA_ROOT": str(setup / "demo"), "SPLIT_ROOT": str(setup / "demo" / "split"), "OUTPUT_DIR": str(tmp_path),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(root / "test.sh"), "--device", "cpu", "--num_workers", "0"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| demo:test |" in done.stdout
    assert {p.name for p in tmp_path.glob("eval_*.json")} == {"eval_demo_val.json", "eval_demo_test.json",
                                                               "eval_summary.json"}
