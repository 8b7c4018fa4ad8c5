"""Graceful stop for preemptible jobs: SIGTERM (SLURM, Kubernetes), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's
--signal) ask the training loop to finish its step, save and exit; a second signal stops at once.

A repeat within DUPLICATE_SECONDS counts as the same request: schedulers signal every process of a job while
train.sh also passes the signal on, so one notice often arrives twice."""
import os
import signal
import sys
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
DUPLICATE_SECONDS = 2.0


class StopSignal:
    """with StopSignal() as stop: ... -- stop.requested turns True at the first signal; the previous handlers are
    restored on exit."""

    def __init__(self):
        self.signum = None
        self.received_at = 0.0
        self.previous = {}

    @property
    def requested(self):
        return self.signum is not None

    def __enter__(self):
        self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, _frame):
        now = time.monotonic()
        if self.signum is not None:
            if now - self.received_at < DUPLICATE_SECONDS:
                return
            # A second request: stop now, as the signal's default action would.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum, self.received_at = signum, now
        sys.stderr.write(f"{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint "
                         f"(send it again to stop at once)\n")
        sys.stderr.flush()

    def exit_status(self):
        """128 + the signal number: what a shell reports for a process that signal ended."""
        return 128 + self.signum
