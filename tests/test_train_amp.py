"""Mixed precision and the lr schedule: autocast bf16 / fp16 (with its gradient scaler) train on CPU; warmup and
cosine_iter give the expected learning rates, paced by steps, time or whichever budget runs out first."""
import argparse
import math

import pytest
import torch

from engine import train_one_epoch
from models import build_model
from train import build_optimizer
from train_helpers import synthetic_batch, tiny_train_args
from utils.losses import build_criterion
from utils.lr_scheduler import lr_factor, run_fraction


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step(amp):
    args = tiny_train_args("--amp", amp)
    torch.manual_seed(0)
    model = build_model(args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, args)
    # A small initial scale: the default 2**16 overflows fp16 here, and GradScaler then (rightly) skips the step.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4, enabled=amp == "fp16")
    state = {"step": 0, "batch": 0, "train_seconds": 0.0}
    stats, _ = train_one_epoch(model, build_criterion(args), [synthetic_batch(args, 2, seed=0)], optimizer, scaler,
                               torch.device("cpu"), 0, args, state)
    assert math.isfinite(stats["loss"]) and state["step"] == 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_warmup_and_cosine_iter():
    args = tiny_train_args("--lr_scheduler", "cosine_iter", "--warmup_steps", "10")
    assert lr_factor(args, 0, 0, 0.0) == pytest.approx(0.1)
    assert lr_factor(args, 0, 9, 0.0) == pytest.approx(1.0)
    assert lr_factor(args, 3, 500, 0.5) == pytest.approx(0.5)
    assert lr_factor(args, 3, 500, 1.0) == pytest.approx(0.0)
    hold = tiny_train_args("--lr_scheduler", "cosine_iter", "--cosine_hold", "0.5")
    assert lr_factor(hold, 0, 500, 0.4) == 1.0 and lr_factor(hold, 0, 500, 0.75) == pytest.approx(0.5)
    assert lr_factor(hold, 0, 500, 1.0) == pytest.approx(0.0)
    step = tiny_train_args("--lr_scheduler", "step", "--lr_drop", "60")
    assert lr_factor(step, 59, 10 ** 6, 0.0) == 1.0 and lr_factor(step, 60, 10 ** 6, 0.0) == pytest.approx(0.1)


def test_run_fraction_follows_the_budget_that_runs_out_first():
    def fraction(minutes, max_steps, step=300, seconds=120.0):
        args = argparse.Namespace(minutes=minutes, max_steps=max_steps, epochs=10)
        return run_fraction(args, {"step": step, "train_seconds": seconds}, steps_per_epoch=100)

    assert fraction(0, 0) == pytest.approx(0.3)  # epochs only
    assert fraction(8, 0) == pytest.approx(0.25)  # --minutes 8
    assert fraction(8, 1000) == pytest.approx(0.3)  # --max_steps 1000 first
    assert fraction(200 / 60, 1000) == pytest.approx(0.6)  # the time first
    assert fraction(0, 1000, step=1200, seconds=0.0) == 1.0
