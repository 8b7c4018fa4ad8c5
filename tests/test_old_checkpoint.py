"""A checkpoint written by an earlier version of the project (tests/data/old_checkpoint.pth; old_checkpoint.json says
how it was made and what it gave) still loads, evaluates to the figures it gave then and resumes training: a
checkpoint holds tensors and JSON, never a reference to one of the project's modules, so moving code between files
cannot break it."""
import json
import pickletools
import shutil
import zipfile
from pathlib import Path

import pytest
from helpers import TINY_TRAIN, make_demo

import eval as evaluate_script
import train
from models.checkpoint import safe_load

DATA = Path(__file__).parent / "data"
OLD = DATA / "old_checkpoint.pth"
PROJECT_PACKAGES = {"datasets", "models", "utils", "evaluation", "inference", "engine", "train", "eval", "predict",
                    "app", "tools", "benchmarks"}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_demo(tmp_path_factory, seed=1, train=32, holdout=6)


def pickled_modules(path):
    """The modules whose names a torch.save file's pickle refers to (GLOBAL and STACK_GLOBAL opcodes)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    modules, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            modules.add(arg.split(" ")[0])
        elif opcode.name == "STACK_GLOBAL":
            modules.add(strings[-2])
        if isinstance(arg, str):
            strings.append(arg)
    return modules


def test_the_old_checkpoint_evaluates_to_the_figures_it_gave(demo_root, tmp_path):
    expected = json.loads((DATA / "old_checkpoint.json").read_text())
    records = tmp_path / "records.jsonl"
    opts = evaluate_script.get_args_parser().parse_args([
        "--checkpoint", str(OLD), "--data_root", str(demo_root), "--split_root", str(demo_root / "split"),
        "--eval_set", "test", "--output_dir", str(tmp_path), "--save_predictions", str(records), "--device", "cpu",
        "--num_workers", "0"])
    evaluate_script.main(opts)

    stats = json.loads((tmp_path / "eval_demo_test.json").read_text())
    assert stats["miou"] == pytest.approx(expected["miou"], abs=1e-5)
    assert stats["mask"]["miou"] == pytest.approx(expected["mask_miou"], abs=1e-5)
    got = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["phrase"] for r in got] == [r["phrase"] for r in expected["records"]]
    for new, old in zip(got, expected["records"]):
        assert Path(new["image"]).name == Path(old["image"]).name
        assert new["box"] == pytest.approx(old["box"], abs=0.011) and new["score"] == pytest.approx(old["score"],
                                                                                                  abs=1e-3)


def test_the_old_checkpoint_resumes_and_the_new_one_names_no_project_module(demo_root, tmp_path):
    assert not pickled_modules(OLD) & PROJECT_PACKAGES
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    shutil.copy(OLD, output_dir / "checkpoint_latest.pth")
    args = train.get_args_parser().parse_args(TINY_TRAIN + [
        "--dataset", "demo", "--data_root", str(demo_root), "--split_root", str(demo_root / "split"),
        "--output_dir", str(output_dir), "--batch_size", "8", "--epochs", "2", "--backbone_stride", "8",
        "--mask_head", "fine", "--lr", "1e-3", "--resume", str(output_dir / "checkpoint_latest.pth")])
    train.main(args)

    resumed = safe_load(output_dir / "checkpoint_latest.pth")
    assert (resumed["epoch"], resumed["step"]) == (1, 8)
    modules = pickled_modules(output_dir / "checkpoint_latest.pth")
    assert "torch._utils" in modules and not modules & PROJECT_PACKAGES, modules
