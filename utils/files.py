"""Durable file writes for every part of the project (index files, prediction records, checkpoints, exports): a
file is either its old or its new content after a crash, and a failed write says why in one line."""
import errno
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch


class FileWriteError(RuntimeError):
    """A file that cannot be written (disk full, permission denied); the message names it and says why."""


def first_line(text):
    """The first sentence of an error message (torch's zip reader appends a paragraph of advice)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split(". ")[0]


def fsync_folder(folder):
    """Make a rename or a new file in folder durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """write(file) into a temporary file of path's folder, fsync it, rename it over path, fsync the folder: after a
    crash or a power cut path holds either the old or the new content, never a mix. A failure (disk full,
    permission denied) raises FileWriteError and leaves path as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        fsync_folder(path.parent)
        os.replace(tmp, path)
        tmp = None
        fsync_folder(path.parent)
    except (OSError, RuntimeError) as err:
        raise FileWriteError(f"cannot write {path}: {write_failure(err, path.parent)}; the previous "
                              f"{'checkpoint' if path.suffix == '.pth' else 'file'} is kept") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_failure(err, folder):
    """Why a write failed, in words: torch's zip writer reports a full disk as 'unexpected pos ...'."""
    if isinstance(err, OSError) and err.errno is not None:
        return os.strerror(err.errno).lower()
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return os.strerror(errno.ENOSPC).lower()
    except OSError:
        pass
    return first_line(str(err))


def atomic_save(obj, path):
    """torch.save through atomic_write."""
    atomic_write(path, lambda f: torch.save(obj, f))


class PlainUnpickler(pickle.Unpickler):
    """Annotation pickles (REFER's refs) hold lists and dicts of plain values: no class is ever needed, so none is
    loaded."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the file should hold plain data only")


def load_plain_pickle(path):
    """A pickle of plain data (lists, dicts, strings, numbers); any class in it is refused."""
    with Path(path).open("rb") as f:
        return PlainUnpickler(f).load()

