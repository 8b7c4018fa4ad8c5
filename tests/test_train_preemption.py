"""Preemption: real train.py processes killed with SIGKILL at a random step, or stopped by SIGTERM under a
2-process gloo launch, continue with --auto_resume exactly where they were."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, free_port, make_demo

from models.checkpoint import safe_load

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 4
EPOCHS = 3


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_demo(tmp_path_factory, seed=3, train=8 * STEPS_PER_EPOCH, holdout=4)


def train_command(demo_root, output_dir, *extra):
    # Dropout and the augmentation are on: every RNG stream has to continue exactly.
    return [sys.executable, "train.py", *TINY_TRAIN, "--dataset", "demo", "--data_root", str(demo_root),
            "--split_root", str(demo_root / "split"), "--output_dir", str(output_dir), "--batch_size", "8",
            "--epochs", str(EPOCHS), "--dropout", "0.1", "--lr_scheduler", "cosine_iter", "--warmup_steps", "3",
            "--lr", "1e-3", "--save_every", "1", "--auto_resume", *map(str, extra)]


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def latest_step(output_dir):
    try:
        return safe_load(output_dir / "checkpoint_latest.pth")["step"]
    except Exception:  # not written yet (or being replaced)
        return -1


def wait_for_step(proc, output_dir, step, timeout=240):
    deadline = time.time() + timeout
    while latest_step(output_dir) < step:
        assert proc.poll() is None, f"training ended before step {step}: {proc.communicate()}"
        assert time.time() < deadline, f"step {step} not reached in {timeout} s"
        time.sleep(0.05)


def assert_same_run(a, b):
    assert a["step"] == b["step"] == EPOCHS * STEPS_PER_EPOCH
    for name, value in a["model"].items():
        assert torch.equal(b["model"][name], value), name
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)


# What the demo trains with besides: zero-initialised residual blocks, trainable BatchNorm, the fine head on part of
# each batch.
DEMO_TRAINING = ["--backbone_norm", "batch", "--train_stem", "--zero_init_residual", "--mask_head", "fine",
                 "--mask_head_samples", "4"]


@pytest.mark.slow
def test_killed_at_a_random_step_then_resumed_matches_the_uninterrupted_run(demo_root, tmp_path):
    env = environment()
    subprocess.run(train_command(demo_root, tmp_path / "straight", *DEMO_TRAINING), cwd=ROOT, env=env, check=True,
                   capture_output=True)
    straight = safe_load(tmp_path / "straight" / "checkpoint_latest.pth")

    output_dir = tmp_path / "killed"
    mid_epoch = []
    # Killed twice, each time as soon as a random epoch's first step is saved: the kill lands a step or two later,
    # anywhere in the steps, saves and validation that follow, usually before the epoch ends.
    for epoch in sorted(random.sample(range(EPOCHS), 2)):
        proc = subprocess.Popen(train_command(demo_root, output_dir, *DEMO_TRAINING), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_step(proc, output_dir, epoch * STEPS_PER_EPOCH + 1)
        proc.kill()
        proc.wait()
        mid_epoch.append(not safe_load(output_dir / "checkpoint_latest.pth")["epoch_done"])
    resumed = subprocess.run(train_command(demo_root, output_dir, *DEMO_TRAINING), cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout, mid_epoch
    assert_same_run(straight, safe_load(output_dir / "checkpoint_latest.pth"))
    log = [line for line in (output_dir / "log.txt").read_text().splitlines() if line]
    assert len(log) == EPOCHS, f"one line per epoch, none repeated: {log}"


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_the_same_step_and_resume_continues(demo_root, tmp_path):
    env = environment()
    output_dir = tmp_path / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(free_port())]
    command = launch + train_command(demo_root, output_dir, "--batch_size", "4")[1:]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(proc, output_dir, 2)
    ranks = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                 text=True).stdout.split()]
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0, out
    stops = [line for line in out.splitlines() if " stopped at epoch " in line]
    assert len(stops) == 2, out[-3000:]
    assert {line.split(" stopped at ")[1].split(";")[0] for line in stops} == {
        stops[0].split(" stopped at ")[1].split(";")[0]}, stops
    stopped = safe_load(output_dir / "checkpoint_latest.pth")
    assert f"step {stopped['step']};" in stops[0] and not stopped["epoch_done"]
    assert stopped["step"] < EPOCHS * STEPS_PER_EPOCH

    command = launch[:-1] + [str(free_port())] + train_command(demo_root, output_dir, "--batch_size", "4")[1:]
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"step {stopped['step']}" in resumed.stdout
    final = safe_load(output_dir / "checkpoint_latest.pth")
    assert final["step"] == EPOCHS * STEPS_PER_EPOCH and final["epoch_done"]


@pytest.mark.slow
def test_a_second_run_on_a_live_output_folder_is_refused_and_a_killed_holder_blocks_nothing(demo_root, tmp_path):
    env = environment()
    output_dir = tmp_path / "locked"
    command = train_command(demo_root, output_dir, "--epochs", 1000)
    holder = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_step(holder, output_dir, 1)
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 1
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"error: {output_dir} is in use by another training run (host "), lines
        assert f"PID {holder.pid}, started " in lines[0]
        assert holder.poll() is None  # the holder was not disturbed
    finally:
        holder.kill()
        holder.wait()
    killed_at = latest_step(output_dir)
    # The kernel released the lock with its holder: the same command resumes at once.
    rerun = subprocess.run(command + ["--max_steps", str(killed_at + 2)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resumed from {output_dir / 'checkpoint_latest.pth'}" in rerun.stdout
    assert safe_load(output_dir / "checkpoint_latest.pth")["step"] == killed_at + 2
