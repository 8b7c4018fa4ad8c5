"""Weights in the Hub's layout: a .pth becomes model.safetensors, config.json, vocab.txt and a model card that predict
exactly as the .pth does (ours and an official-layout one), readable with safetensors, json and huggingface_hub alone;
a Hub id wherever a checkpoint goes, downloaded from a stand-in Hub on 127.0.0.1 (a revision too) and then read
offline from huggingface_hub's cache; the errors that name what cannot be had."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import noise_image, tiny_args, write_tiny_checkpoint
from hub_server import StandInHub

import eval as eval_script
from datasets import build_tokenizer, demo
from inference import SegVGPredictor
from models import build_model
from models.checkpoint import CheckpointError, ours_to_official
from models.pretrained import read_checkpoint
from tools import export_pretrained

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ["the red circle", "the leftmost shape"]


def official_checkpoint(path):
    """A tiny model saved as the authors' code saves one: their key names under module., the training Namespace."""
    args = tiny_args("--dataset", "unc")
    torch.manual_seed(3)
    model = build_model(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"module." + ours_to_official(k): v for k, v in model.state_dict().items()},
                "args": argparse.Namespace(**vars(args)), "epoch": 89, "best_accu": 0.5}, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{kind: (checkpoint, its exported folder)} for our (demo) checkpoint, with eval.py figures beside it, and an
    official-layout one."""
    root = tmp_path_factory.mktemp("pretrained")
    data = root / "data"
    demo.main(["--output_dir", str(data), "--seed", "2", "--train", "8", "--val", "8", "--test", "8"])
    ours = write_tiny_checkpoint(root / "ours" / "best_checkpoint.pth")
    eval_script.main(eval_script.get_args_parser().parse_args([
        "--checkpoint", str(ours), "--eval_set", "test", "--device", "cpu", "--num_workers", "0", "--data_root",
        str(data), "--split_root", str(data / "split")]))
    official = official_checkpoint(root / "official" / "best_checkpoint.pth")
    folders = {}
    for kind, checkpoint, extra in (("ours", ours, []), ("official", official, ["--vocab_file",
                                                                                 str(ROOT / "datasets" /
                                                                                     "demo_vocab.txt")])):
        folders[kind] = (checkpoint, root / f"{kind}_hub")
        assert export_pretrained.main(["--checkpoint", str(checkpoint), "--output_dir", str(folders[kind][1]),
                                       *extra]) == 0
    return folders, noise_image(root / "photo.png")


@pytest.mark.parametrize("kind", ["ours", "official"])
def test_the_layout_predicts_exactly_as_the_pth(exported, kind):
    folders, photo = exported
    checkpoint, folder = folders[kind]
    vocab = {"vocab_file": str(ROOT / "datasets" / "demo_vocab.txt")} if kind == "official" else {}
    from_pth = SegVGPredictor.from_checkpoint(checkpoint, device="cpu", **vocab)(photo, PHRASES)
    from_layout = SegVGPredictor.from_pretrained(folder, device="cpu")(photo, PHRASES)
    for a, b in zip(from_pth, from_layout):
        assert a["box"] == b["box"] and a["score"] == b["score"]
        assert abs(a["mask"] - b["mask"]).max() == 0.0


def test_each_file_reads_with_its_own_library(exported):
    from huggingface_hub import ModelCard
    from safetensors.torch import load_file

    folders, _ = exported
    checkpoint, folder = folders["ours"]
    weights = load_file(folder / "model.safetensors")
    saved = torch.load(checkpoint, weights_only=True)["model"]
    assert weights.keys() == saved.keys() and all(torch.equal(weights[k], saved[k]) for k in saved)
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "segvg" and config["model_config"]["imsize"] == 64
    assert not {"output_dir", "data_root", "device"} & set(config["model_config"])
    assert (folder / "vocab.txt").read_text().split("\n")[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and "visual-grounding" in card.data.tags
    report = json.loads((checkpoint.parent / "eval_demo_test.json").read_text())
    accuracy = [r for r in card.data.eval_results if r.metric_name == "Acc@0.5"]
    assert len(accuracy) == 1 and accuracy[0].dataset_split == "test"
    assert accuracy[0].metric_value == round(report["accu"], 4) and accuracy[0].dataset_type == "segvg-demo"
    assert "SegVGPredictor.from_pretrained" in card.text
    official = ModelCard.load(folders["official"][1] / "README.md")
    assert "authors' weights, converted" in official.text and not official.data.eval_results


def test_a_hub_id_downloads_with_its_revision_then_reads_offline(exported, tmp_path):
    folders, photo = exported
    hub = StandInHub()
    try:
        ours, official = folders["ours"][1], folders["official"][1]
        hub.publish("segvg/tiny", {p.name: p.read_bytes() for p in ours.iterdir()}, ("main",))
        hub.publish("segvg/tiny", {p.name: p.read_bytes() for p in official.iterdir()}, ("v0",))
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
        command = [sys.executable, "predict.py", "--checkpoint", "segvg/tiny", "--image", str(photo), "--phrase",
                   PHRASES[0], "--device", "cpu", "--json"]
        online = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert online.returncode == 0, online.stderr[-2000:]
        tagged = subprocess.run(command[:3] + ["segvg/tiny@v0"] + command[4:], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert tagged.returncode == 0, tagged.stderr[-2000:]
        missing = subprocess.run(command[:3] + ["segvg/tiny@v9"] + command[4:], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1] == (
            "error: Hub model segvg/tiny has no revision 'v9': give a branch, tag or commit it has")
        assert any("/resolve/" in path and "model.safetensors" in path for _, path in hub.requests)
    finally:
        hub.close()
    ours_record, official_record = (json.loads(run.stdout.strip().splitlines()[-1]) for run in (online, tagged))
    local = SegVGPredictor.from_pretrained(folders["ours"][1], device="cpu")(photo, PHRASES[0])
    assert ours_record["box"] == [round(v, 2) for v in local["box"]] and official_record["box"] != ours_record["box"]
    # The server is gone: offline, from the cache.
    offline = subprocess.run(command, cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                             timeout=300)
    assert offline.returncode == 0, offline.stderr[-2000:]
    assert json.loads(offline.stdout.strip().splitlines()[-1])["box"] == ours_record["box"]
    absent = subprocess.run(command[:3] + ["segvg/other"] + command[4:], cwd=ROOT,
                            env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert absent.returncode == 1 and "is not in the local cache and the Hub cannot be reached" in absent.stderr


def test_what_cannot_be_read_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: nowhere.pth"):
        read_checkpoint("nowhere.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a SegVG weights folder: no model.safetensors, config.json"):
        read_checkpoint(tmp_path / "empty")
    with pytest.raises(SystemExit, match="give a Hub repository id ORG/NAME"):
        export_pretrained_cli(["--checkpoint", "x.pth", "--output_dir", str(tmp_path / "o"), "--push_to_hub", "a"])


def export_pretrained_cli(argv):
    """tools/export_pretrained.py as its command line runs it (errors as one line)."""
    try:
        return export_pretrained.main(argv)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None


def test_pushing_without_a_token_or_network_fails_in_one_line(exported, tmp_path):
    folders, _ = exported
    hub = StandInHub()  # answers 404 to repository creation: no token is there to send anyway
    try:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
        env.pop("HF_TOKEN", None)
        done = subprocess.run([sys.executable, "tools/export_pretrained.py", "--checkpoint", str(folders["ours"][0]),
                               "--output_dir", str(tmp_path / "out"), "--push_to_hub", "segvg/new"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
    finally:
        hub.close()
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: cannot push to segvg/new")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert build_tokenizer  # the tokenizer module is importable without the Hub
