"""StopSignal and tools/launch.sh: a stop request reaches the training process and is counted once."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Waits for a stop request the way train.py does, then exits with train.py's status for it.
WAITER = """
import sys, time
sys.path.insert(0, {root!r})
from utils.preemption import StopSignal
with StopSignal() as stop:
    print("ready", flush=True)
    deadline = time.time() + 30
    while not stop.requested and time.time() < deadline:
        time.sleep(0.01)
    time.sleep({linger})
    print("stopping", stop.signum, flush=True)
    sys.exit(stop.exit_status() if stop.requested else 1)
"""


def start(command, env=None):
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_repeat_within_the_window_is_the_same_request_a_later_one_stops_at_once():
    proc = start([sys.executable, "-c", WAITER.format(root=str(ROOT), linger=4)])
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the same notice delivered twice: still a graceful stop
    time.sleep(2.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)  # a second request: the default action, at once
    assert proc.wait(timeout=10) == -signal.SIGTERM


def test_launch_passes_usr1_on_and_returns_the_exit_status(tmp_path):
    waiter = tmp_path / "waiter.py"
    waiter.write_text(WAITER.format(root=str(ROOT), linger=0))
    proc = start(["bash", "-c", f"source tools/launch.sh; launch '{waiter}'"],
                 env={**os.environ, "PYTHON": sys.executable, "NPROC": "1", "NNODES": "1"})
    proc.send_signal(signal.SIGUSR1)  # to the shell only, as SLURM's --signal=B:USR1 does
    out, _ = proc.communicate(timeout=30)
    assert f"stopping {int(signal.SIGUSR1)}" in out
    assert proc.returncode == 128 + signal.SIGUSR1
