"""Mixed precision and the lr schedule: autocast bf16 / fp16 (with its gradient scaler) train on CPU; warmup and
cosine_iter give the expected learning rates, paced by steps, time or whichever budget runs out first."""
import argparse

import pytest
import torch
from helpers import synthetic_batch, tiny_train_args

from engine import TrainState, train_one_epoch
from models import build_model
from models.criterion import build_criterion
from train import build_optimizer
from utils.lr_scheduler import lr_factor, run_fraction


def one_step_update(amp):
    """The parameter change of one SGD step (no dropout) from a fixed initialisation, as one flat vector."""
    args = tiny_train_args("--amp", amp, "--optimizer", "sgd", "--lr", "0.1", "--lr_bert", "0.1", "--lr_visu_cnn",
                           "0.1", "--lr_visu_tra", "0.1", "--freeze_epochs", "0", "--clip_max_norm", "0")
    torch.manual_seed(0)
    model = build_model(args)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    # A small initial scale: the default 2**16 overflows fp16 here, and GradScaler then (rightly) skips the step.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4, enabled=amp == "fp16")
    state = TrainState(model, build_criterion(args), build_optimizer(model, args), scaler, torch.device("cpu"), args,
                       {"step": 0, "batch": 0, "train_seconds": 0.0})
    stats, status = train_one_epoch(state, [synthetic_batch(args, 2, seed=0)], 0)
    assert status == "done" and state.progress["step"] == 1
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - before, stats["loss"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step_follows_the_fp32_step(amp):
    """One autocast step moves the weights like the fp32 step: the update's direction (cosine similarity) and
    size agree within the precision's noise (fp16 through the gradient scaler, which must not skip the step).
    Measured: loss ratio 1.0002 / 1.0000, cosine 0.995 / 0.9997, norm ratio 1.002 / 0.997 (bf16 / fp16)."""
    reference, reference_loss = one_step_update("off")
    update, loss = one_step_update(amp)
    assert loss == pytest.approx(reference_loss, rel=0.01)
    assert torch.nn.functional.cosine_similarity(update, reference, dim=0) > 0.98
    assert update.norm() == pytest.approx(reference.norm().item(), rel=0.05)


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
