"""train.main end to end on a tiny demo split: a run stopped by a non-finite loss keeps its last checkpoint, and
resuming from it reproduces the uninterrupted run bit for bit (weights, optimizer, RNG streams, schedule)."""
import json
import re

import pytest
import torch
from helpers import TINY_TRAIN, make_demo
from torch import nn
from torch.utils.data import DataLoader, Subset

import train
from datasets import build_dataset, collate_fn
from engine import NonFiniteLossError, evaluate, summarize_results
from models.checkpoint import safe_load
from models.pretrained import load_from_checkpoint

STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_demo(tmp_path_factory, seed=1, train=8 * STEPS_PER_EPOCH, holdout=6)


def run(demo_root, output_dir, *extra):
    # Dropout and the training augmentation (jitter, flip) are on: the RNG streams must be restored too.
    args = train.get_args_parser().parse_args(TINY_TRAIN + [
        "--dataset", "demo", "--data_root", str(demo_root), "--split_root", str(demo_root / "split"),
        "--output_dir", str(output_dir), "--batch_size", "8", "--epochs", "2", "--dropout", "0.1",
        "--lr_scheduler", "cosine_iter", "--warmup_steps", "3", "--lr", "1e-3", *extra])
    train.main(args)
    return safe_load(output_dir / "checkpoint_latest.pth")


class NaNFromStep(nn.Module):
    """The real loss, made non-finite from the given step on."""

    def __init__(self, criterion, step):
        super().__init__()
        self.criterion = criterion
        self.step = step
        self.calls = 0

    def forward(self, *inputs):
        losses = self.criterion(*inputs)
        self.calls += 1
        if self.calls > self.step:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


def test_non_finite_loss_stops_then_resume_matches_straight_run(demo_root, tmp_path, monkeypatch):
    straight = run(demo_root, tmp_path / "straight")
    assert straight["epoch"] == 1 and straight["step"] == 2 * STEPS_PER_EPOCH

    build_criterion = train.build_criterion
    monkeypatch.setattr(train, "build_criterion",
                        lambda *args: NaNFromStep(build_criterion(*args), STEPS_PER_EPOCH))
    with pytest.raises(NonFiniteLossError, match=f"step {STEPS_PER_EPOCH} "):
        run(demo_root, tmp_path / "resumed")
    kept = safe_load(tmp_path / "resumed" / "checkpoint_latest.pth")
    assert kept["epoch"] == 0 and kept["step"] == STEPS_PER_EPOCH
    monkeypatch.setattr(train, "build_criterion", build_criterion)

    resumed = run(demo_root, tmp_path / "resumed", "--resume", str(tmp_path / "resumed" / "checkpoint_latest.pth"))
    assert resumed["step"] == straight["step"]
    for name, value in straight["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_stats"] == straight["val_stats"]


def test_checkpoint_is_self_contained(demo_root, tmp_path):
    checkpoint = run(demo_root, tmp_path / "out", "--epochs", "1")
    assert checkpoint["tokenizer"]["vocab"][:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert checkpoint["args"]["bert_vocab_size"] == len(checkpoint["tokenizer"]["vocab"])
    assert (tmp_path / "out" / "best_checkpoint.pth").is_file()
    log = (tmp_path / "out" / "log.txt").read_text().splitlines()
    assert len(log) == 1 and '"validation_accu"' in log[0]


def test_validation_curve_every_n_steps(demo_root, tmp_path):
    from tools.plot_log import plot_log
    run(demo_root, tmp_path / "out", "--epochs", "1", "--eval_every", "2", "--eval_subset", "4", "--seg_loss", "off")
    curve = [json.loads(line) for line in (tmp_path / "out" / "val_curve.txt").read_text().splitlines()]
    assert [point["step"] for point in curve] == [2, 4]
    # The last point is the final model (step 4, the end of the epoch) on the first 4 validation samples.
    model, tokenizer, args, _ = load_from_checkpoint(tmp_path / "out" / "checkpoint_latest.pth")
    dataset = build_dataset("val", args, tokenizer)
    loader = DataLoader(Subset(dataset, range(4)), batch_size=3, collate_fn=collate_fn)
    again = summarize_results(evaluate(model, loader, "cpu"), dataset)
    assert curve[-1]["count"] == again["count"] == 4
    assert curve[-1]["accu"] == again["accu"] and curve[-1]["miou"] == pytest.approx(again["miou"], abs=1e-6)
    # per expression type too: the first 4 validation samples' types, each sample counted once
    assert all(sum(s["count"] for s in point["by_type"].values()) == 4 for point in curve)
    assert curve[0]["train_seconds"] < curve[1]["train_seconds"]
    assert plot_log(tmp_path / "out" / "log.txt", tmp_path / "curves.png").is_file()


def test_max_steps_ends_the_run_mid_epoch_and_a_rerun_has_nothing_left(demo_root, tmp_path, capsys):
    stopped = run(demo_root, tmp_path / "out", "--max_steps", str(STEPS_PER_EPOCH + 2))
    assert stopped["step"] == STEPS_PER_EPOCH + 2 and stopped["epoch"] == 1  # cut short, then validated
    assert f"training budget (--max_steps {STEPS_PER_EPOCH + 2}," in capsys.readouterr().out
    log = (tmp_path / "out" / "log.txt").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2]
    again = run(demo_root, tmp_path / "out", "--max_steps", str(STEPS_PER_EPOCH + 2), "--auto_resume")
    assert again["step"] == STEPS_PER_EPOCH + 2
    assert "nothing left to train" in capsys.readouterr().out


def test_the_last_lines_say_whether_the_run_was_step_bound_or_capped(demo_root, tmp_path, capsys):
    from tools import plot_log
    run(demo_root, tmp_path / "steps", "--max_steps", "3", "--minutes", "60")
    assert "Training ended: step-bound, 3 of 3 steps in " in capsys.readouterr().out
    plot_log.main([str(tmp_path / "steps" / "log.txt")])
    assert capsys.readouterr().out.splitlines()[-1].startswith("training: step-bound, 3 of 3 steps in ")

    # A cap of 0.06 s of training: spent after a step or two, long before the 6 steps.
    run(demo_root, tmp_path / "capped", "--max_steps", "6", "--minutes", "0.001")
    out = capsys.readouterr().out
    done = re.search(r"Training ended: stopped by the 0.001-minute cap \(--minutes\) after (\d) of 6 steps", out)
    assert done and int(done[1]) < 6, out
    assert json.loads((tmp_path / "capped" / "log.txt").read_text().splitlines()[-1])["end"].startswith(
        "stopped by the 0.001-minute cap")

    run(demo_root, tmp_path / "epochs", "--epochs", "1")
    assert f"Training ended: all 1 epochs, {STEPS_PER_EPOCH} steps in " in capsys.readouterr().out
