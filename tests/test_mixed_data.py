"""Several datasets at once (--dataset A,B): REFER-format index files with images planted across unc / unc+ /
gref_umd / gref; exactly the planted training expressions are dropped and named in mixed_data.json."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, tiny_train_args
from PIL import Image
from test_train_preemption import ROOT, environment, wait_for_step

from datasets import build_dataset, build_tokenizer
from datasets.mixed import MixedDataset, dataset_names, image_key, read_holdout_list
from engine import selection_score
from eval import get_args_parser as eval_parser
from eval import main as eval_main
from models.checkpoint import safe_load
from train import main as train_main

COCO_DIR = "other/images/mscoco/images/train2014"
# dataset -> split -> COCO image ids (one expression each, two for the images marked twice)
LAYOUT = {
    "unc": {"train": [1, 2, 3, 4, 5, 6], "val": [7], "testA": [8], "testB": [9]},
    "unc+": {"train": [1, 7, 7, 10], "val": [11], "testA": [12], "testB": [13]},  # 7: unc val
    "gref_umd": {"train": [8, 14, 18], "val": [15], "test": [16]},                # 8: unc testA
    "gref": {"train": [11, 17, 19], "val": [17]},                                 # 11: unc+ val; 17: its own val
}
PLANTED = {"unc": [], "unc+": [7, 7], "gref_umd": [8], "gref": [11, 17]}


def coco(n):
    return f"COCO_train2014_{n:012d}.jpg"


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    images = root / "images" / COCO_DIR
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in sorted({n for splits in LAYOUT.values() for ids in splits.values() for n in ids}):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / coco(n))
    for dataset, splits in LAYOUT.items():
        (root / "split" / dataset).mkdir(parents=True)
        for split, ids in splits.items():
            rows = [(coco(n), k, [4, 6, 30, 20], f"the thing number {k}", []) for k, n in enumerate(ids)]
            torch.save(rows, root / "split" / dataset / f"{dataset}_{split}.pth")
    return root


def mix_args(root, dataset, *extra):
    return tiny_train_args("--dataset", dataset, "--data_root", root / "images", "--split_root", root / "split",
                           "--bert_model", "bert-base-uncased", *extra)


def test_names_and_image_keys():
    assert dataset_names("unc, unc+") == ["unc", "unc+"] and dataset_names("demo") == ["demo"]
    for bad in ("unc,,gref", "unc,unc", "a:b,unc"):
        with pytest.raises(ValueError):
            dataset_names(bad)
    assert image_key(coco(42)) == image_key("some/folder/" + coco(42)) == ("coco", 42)
    assert image_key("photos/cat.jpg") == ("file", "cat.jpg")


def test_exactly_the_planted_expressions_are_dropped(refer):
    args = mix_args(refer, "unc,unc+,gref_umd,gref")
    mixed = build_dataset("train", args, build_tokenizer(args))
    assert isinstance(mixed, MixedDataset) and mixed.names == ["unc", "unc+", "gref_umd", "gref"]
    for dataset, planted in PLANTED.items():
        report = mixed.dropped[dataset]
        assert report["dropped"] == len(planted)
        assert report["kept"] == len(LAYOUT[dataset]["train"]) - len(planted)
        assert report["dropped_images"] == sorted({coco(n) for n in planted})
    kept = {(info["dataset"], Path(info["image"]).name) for info in map(mixed.sample_info, range(len(mixed)))}
    assert ("unc+", coco(7)) not in kept and ("unc+", coco(10)) in kept and ("gref", coco(19)) in kept
    assert len(mixed) == sum(r["kept"] for r in mixed.dropped.values())
    sample = mixed[len(mixed) - 1]
    assert sample["index"] == len(mixed) - 1 and sample["img"].shape[-1] == args.imsize


def test_unmixed_datasets_count_and_holdout_lists(refer, tmp_path):
    """gref is not mixed in, its val images still count; a holdout list of ids or file names drops more."""
    holdout = tmp_path / "exclude.txt"
    holdout.write_text("14\n# a comment\nphotos/" + coco(2) + "\n")
    assert read_holdout_list(holdout) == {("coco", 14), ("coco", 2)}
    args = mix_args(refer, "unc,unc+", "--holdout_images", holdout)
    mixed = build_dataset("train", args, build_tokenizer(args))
    assert mixed.dropped["unc"]["dropped_images"] == [coco(2)]
    assert mixed.dropped["unc+"]["dropped_images"] == [coco(7)]  # and gref's val image 17 is in neither's train
    args = mix_args(refer, "unc+,gref_umd", "--allow_test_images")
    mixed = build_dataset("train", args, build_tokenizer(args))
    assert mixed.dropped is None and len(mixed) == 7
    single = build_dataset("train", mix_args(refer, "unc+"), build_tokenizer(args))
    assert len(single) == 4  # a single dataset is the papers' protocol: nothing dropped


def test_validation_reports_each_dataset_and_the_best_follows_their_mean(refer):
    args = mix_args(refer, "unc,unc+")
    val = build_dataset("val", args, build_tokenizer(args))
    assert val.dropped is None and [val.sample_info(k)["dataset"] for k in range(len(val))] == ["unc", "unc+"]
    stats = {"accu": 0.2, "by_dataset": {"unc": {"accu": 0.5}, "unc+": {"accu": 0.1}}}
    assert selection_score(stats) == pytest.approx(0.3) and selection_score(stats, "unc+") == 0.1
    assert selection_score({"accu": 0.2}) == 0.2
    with pytest.raises(ValueError, match="--best_on gref"):
        selection_score(stats, "gref")


def test_a_mixed_run_trains_and_writes_mixed_data_json(refer, tmp_path, capsys):
    out = tmp_path / "run"
    args = mix_args(refer, "unc,unc+,gref_umd", "--output_dir", out, "--batch_size", "2", "--max_steps", "3",
                    "--epochs", "1", "--bert_init", "random")
    status, _ = train_main(args)
    assert status in ("done", "budget")
    printed = capsys.readouterr().out
    assert "unc+: 2 training expressions kept, 2 dropped" in printed
    report = json.loads((out / "mixed_data.json").read_text())
    assert report["datasets"]["gref_umd"]["dropped_images"] == [coco(8)]
    assert set(report["datasets"]) == {"unc", "unc+", "gref_umd"}
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    by_dataset = log[-1]["validation_by_dataset"]
    assert set(by_dataset) == {"unc", "unc+", "gref_umd"}
    # The run's figures per dataset are eval.py's on the same checkpoint and split (one epoch: best = last).
    flags = ["--checkpoint", str(out / "best_checkpoint.pth"), "--device", "cpu", "--num_workers", "0",
             "--output_dir", str(tmp_path / "eval")]
    summary = eval_main(eval_parser().parse_args(flags + ["--eval_sets", "unc:val,unc+:val,gref_umd:val"]))
    for name, stats in by_dataset.items():
        assert summary[f"{name}:val"]["count"] == stats["count"]
        assert summary[f"{name}:val"]["miou"] == pytest.approx(stats["miou"], abs=1e-5)
        assert summary[f"{name}:val"]["accu"] == stats["accu"]
    with pytest.raises(ValueError, match="trained on several datasets"):
        eval_main(eval_parser().parse_args(flags + ["--eval_set", "val"]))


def mixed_command(refer, output_dir):
    return [sys.executable, "train.py", *TINY_TRAIN, "--dataset", "unc,unc+,gref_umd", "--dataset_ratios", "1,1,2",
            "--data_root", str(refer / "images"), "--split_root", str(refer / "split"), "--output_dir",
            str(output_dir), "--batch_size", "2", "--epochs", "3", "--dropout", "0.1", "--lr_scheduler", "cosine_iter",
            "--lr", "1e-3", "--save_every", "1", "--auto_resume", "--bert_model", "bert-base-uncased"]


@pytest.mark.slow
def test_a_sigkilled_mixed_run_resumes_bit_exact(refer, tmp_path):
    env = environment()
    subprocess.run(mixed_command(refer, tmp_path / "straight"), cwd=ROOT, env=env, check=True, capture_output=True)
    straight = safe_load(tmp_path / "straight" / "checkpoint_latest.pth")
    output_dir = tmp_path / "killed"
    proc = subprocess.Popen(mixed_command(refer, output_dir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    steps_per_epoch = straight["step"] // 3
    wait_for_step(proc, output_dir, random.choice([s for s in range(2, straight["step"] - 2) if s % steps_per_epoch]))
    proc.kill()
    proc.wait()
    killed_at = safe_load(output_dir / "checkpoint_latest.pth")["step"]
    resumed = subprocess.run(mixed_command(refer, output_dir), cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"step {killed_at}" in resumed.stdout
    final = safe_load(output_dir / "checkpoint_latest.pth")
    assert final["step"] == straight["step"]
    for name, value in straight["model"].items():
        assert torch.equal(final["model"][name], value), name


@pytest.mark.parametrize("world_size", [1, 3])
def test_dataset_ratios_give_each_dataset_its_share(world_size):
    from datasets.samplers import MixSampler

    sizes, ratios = [500, 120, 2000], [1, 1, 2]
    drawn = []
    for epoch in range(4):
        for rank in range(world_size):
            sampler = MixSampler(sizes, ratios, seed=3, rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            assert len(indices) == len(sampler) == -(-sum(sizes) // world_size)
            drawn += indices
    counts = np.bincount(np.searchsorted(np.cumsum(sizes), drawn, side="right"), minlength=3)
    shares = counts / counts.sum()
    np.testing.assert_allclose(shares, np.array(ratios) / sum(ratios), atol=0.02)
    again = MixSampler(sizes, ratios, seed=3)
    again.set_epoch(2)
    first = list(again)
    assert first == list(again) and len(set(first[:500])) > 400  # the same order per epoch, well shuffled
    uses = np.bincount([k - 500 for k in first if 500 <= k < 620], minlength=120)
    assert uses.max() - uses.min() <= 1  # the small dataset: every sample once before any is drawn twice
    # Under torchrun the ranks split one order, as DistributedSampler does: interleaved, they are the single order.
    shards = [list(MixSampler(sizes, ratios, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert [shards[k % 3][k // 3] for k in range(sum(sizes))] == list(MixSampler(sizes, ratios, seed=3))
    with pytest.raises(ValueError):
        MixSampler(sizes, [1, 1])


def test_ratios_in_a_run(refer, tmp_path):
    from datasets import build_loaders

    args = mix_args(refer, "unc,gref_umd", "--dataset_ratios", "1,3", "--batch_size", "2")
    loader, _ = build_loaders(args, build_tokenizer(args))
    names = [loader.dataset.sample_info(k)["dataset"] for k in loader.batch_sampler.sampler]
    assert names.count("gref_umd") == 6 and names.count("unc") == 2
    with pytest.raises(ValueError, match="give 2 comma-separated numbers"):
        build_loaders(mix_args(refer, "unc,gref_umd", "--dataset_ratios", "1"), build_tokenizer(args))
