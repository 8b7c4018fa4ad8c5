"""StopSignal and tools/launch.sh: a stop request reaches the training process and is counted once."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from utils import preemption
from utils.preemption import StopSignal

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
    print("stopping", stop.signum, flush=True)
    sys.exit(stop.exit_status() if stop.requested else 1)
"""


def start(command, env=None):
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_repeat_within_the_window_is_the_same_request_a_later_one_stops_at_once(monkeypatch):
    """The handler on a controlled clock (no sleeps, no race): a repeat inside DUPLICATE_SECONDS is ignored, a later
    one restores the default action and re-raises the signal."""
    now = [1000.0]
    kills = []
    monkeypatch.setattr(preemption.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(preemption.os, "kill", lambda pid, signum: kills.append((pid, signum)))
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        signal.raise_signal(signal.SIGUSR1)  # a real delivery, through the installed handler
        for _ in range(10 ** 6):  # Python runs the handler at its next check, within a few bytecodes
            if stop.requested:
                break
        assert stop.signum == signal.SIGUSR1 and not kills
        now[0] += preemption.DUPLICATE_SECONDS / 2
        stop._handle(signal.SIGTERM, None)  # the same notice delivered twice: still a graceful stop
        assert stop.signum == signal.SIGUSR1 and not kills
        now[0] += preemption.DUPLICATE_SECONDS
        stop._handle(signal.SIGTERM, None)  # a second request: the default action, at once
        assert kills == [(os.getpid(), signal.SIGTERM)]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert stop.exit_status() == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored on exit


def test_launch_passes_usr1_on_and_returns_the_exit_status(tmp_path):
    waiter = tmp_path / "waiter.py"
    waiter.write_text(WAITER.format(root=str(ROOT)))
    proc = start(["bash", "-c", f"source tools/launch.sh; launch '{waiter}'"],
                 env={**os.environ, "PYTHON": sys.executable, "NPROC": "1", "NNODES": "1"})
    proc.send_signal(signal.SIGUSR1)  # to the shell only, as SLURM's --signal=B:USR1 does
    out, _ = proc.communicate(timeout=30)
    assert f"stopping {int(signal.SIGUSR1)}" in out
    assert proc.returncode == 128 + signal.SIGUSR1
