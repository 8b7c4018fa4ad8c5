"""Graceful stop for preemptible jobs: SIGTERM (SLURM, Kubernetes), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's
--signal) ask the training loop to finish its step, save and exit; a second signal stops at once."""
import os
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignal:
    """with StopSignal() as stop: ... -- stop.requested turns True at the first signal; the previous handlers are
    restored on exit."""

    def __init__(self):
        self.signum = None
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
        if self.signum is not None:  # the second signal: stop now, as the default action of that signal would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        sys.stderr.write(f"{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint "
                         f"(send it again to stop at once)\n")
        sys.stderr.flush()

    def exit_status(self):
        """128 + the signal number: what a shell reports for a process that signal ended."""
        return 128 + self.signum
