"""One run per output folder: an exclusive flock on <output_dir>/.lock held by the process that writes the folder.

The kernel drops the lock with its holder, however it ends (SIGKILL and OOM included), so a relaunch after a crash
is never blocked; a second run while the first lives is refused with the holder's host, PID and start time."""
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockError(RuntimeError):
    """The output folder belongs to a run that is still alive."""


class OutputDirLock:
    def __init__(self, folder):
        self.path = Path(folder) / LOCK_NAME
        self.file = None

    def acquire(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = describe_holder(file.read())
            file.close()
            raise RunLockError(f"{self.path.parent} is in use by another training run ({holder}); wait for it to "
                               f"end or stop it, or choose another --output_dir") from None
        # Ours now: say who holds it, for the next run that finds it taken.
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                               "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}))
        file.flush()
        self.file = file
        return self

    def release(self):
        if self.file is not None:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def describe_holder(text):
    try:
        info = json.loads(text)
        return f"host {info['host']}, PID {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
