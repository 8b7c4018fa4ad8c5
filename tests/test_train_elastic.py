"""Runs that heal themselves: MAX_RESTARTS=1 NPROC=2 bash train.sh survives a SIGKILLed worker and ends with the
weights of an uninterrupted run; a SIGSTOPped rank ends the job after --dist_timeout with a line that says so."""
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY_TRAIN, free_port
from test_train_preemption import (ROOT, STEPS_PER_EPOCH, assert_same_run, demo_root, environment,  # noqa: F401
                                   train_command, wait_for_step)

from models.checkpoint import safe_load


def train_sh(demo_root, output_dir, **env):
    """bash train.sh on the demo data with the tiny model (its flags after the demo's win), 2 processes, gloo."""
    flags = train_command(demo_root, output_dir, "--batch_size", "4", "--max_steps", "0")[2:]
    variables = {**environment(), "NPROC": "2", "MASTER_PORT": str(free_port()), "DATA_ROOT": str(demo_root),
                 "SPLIT_ROOT": str(demo_root / "split"), "OUTPUT_DIR": str(output_dir), "DEMO_MINUTES": "0",
                 "PYTHON": sys.executable, **env}
    return ["bash", "train.sh", *flags], variables


def workers(launcher):
    """The training processes under a launcher (bash -> torchrun -> workers, or torchrun -> workers)."""
    found = []
    for child in subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split():
        grandchildren = subprocess.run(["pgrep", "-P", child], capture_output=True, text=True).stdout.split()
        found += [int(pid) for pid in grandchildren] or [int(child)]
    return found


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_ends_as_an_uninterrupted_one(demo_root, tmp_path):
    command, env = train_sh(demo_root, tmp_path / "straight")
    straight = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    output_dir = tmp_path / "restarted"
    command, env = train_sh(demo_root, output_dir, MAX_RESTARTS="1")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(proc, output_dir, STEPS_PER_EPOCH + 1)
    ranks = workers(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert "torchrun restarted the workers after a failure (restart 1 of 1)" in out, out[-4000:]
    assert "resumed from" in out
    assert_same_run(safe_load(tmp_path / "straight" / "checkpoint_latest.pth"),
                    safe_load(output_dir / "checkpoint_latest.pth"))


@pytest.mark.slow
def test_a_stopped_rank_ends_the_job_after_the_collective_timeout(demo_root, tmp_path):
    output_dir = tmp_path / "hung"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "train.py", *TINY_TRAIN, "--dataset", "demo", "--data_root",
               str(demo_root), "--split_root", str(demo_root / "split"), "--output_dir", str(output_dir),
               "--epochs", "100", "--save_every", "1", "--dist_timeout", "5"]
    proc = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        wait_for_step(proc, output_dir, 2)
        ranks = workers(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGSTOP)
        stopped = time.time()
        out, _ = proc.communicate(timeout=180)
        waited = time.time() - stopped
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "--dist_timeout 5 s" in out, out[-3000:]
    assert waited < 5 + 60, waited  # the timeout, then torchrun's grace period before it kills the stopped rank
