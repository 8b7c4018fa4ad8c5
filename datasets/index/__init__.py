"""A split's expressions in one index file, built once per node and memory-mapped by every process that reads the
split (docs/data.md, "The index cache").

The first process to open a split builds its index from the source files (a built-in dataset's .pth tuples, or
JSONL records streamed line by line) and writes it atomically, holding a lock that makes every other process wait
and then map the same file. The file records its sources' sizes, modification times and content hashes: a changed
source rebuilds it; a truncated or damaged file is rebuilt with a line that says so.
"""
import contextlib
import fcntl
import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np

from ..catalog import is_builtin, require_index_file
from .build import assemble, loads, read_parts
from .format import IndexFile, IndexFormatError, refresh_header, write_index

# What a row holds; a change here rebuilds every cache.
FORMAT = 1
SUFFIX = ".index"


def default_cache_dir():
    """Where indexes go when the split files' folder is not writable: $XDG_CACHE_HOME/segvg/index (~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segvg" / "index"


def cache_path(files, dataset, split, cache_dir=None):
    """The index file of a split: beside its (first) source file when that folder is writable, else in cache_dir (or
    the default cache folder) under a name that tells splits of different folders apart."""
    if cache_dir is None and os.access(Path(files[0]).parent, os.W_OK):
        return beside(files, dataset, split)
    sources = "\n".join(str(Path(f).resolve()) for f in files)
    key = hashlib.sha1(sources.encode()).hexdigest()[:12]
    return Path(cache_dir or default_cache_dir()) / f"{dataset}_{split}-{key}{SUFFIX}"


def beside(files, dataset, split):
    return Path(files[0]).parent / f"{dataset}_{split}{SUFFIX}"


def content_hash(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def source_state(path, with_hash=True):
    stat = os.stat(path)
    state = {"name": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if with_hash:
        state["sha256"] = content_hash(path)
    return state


def kind_of(dataset):
    """What decides how a row is read: the built-in dataset's tuple layout, or JSONL."""
    return dataset if is_builtin(dataset) else "jsonl"


def check_cache(path, files, dataset):
    """(IndexFile or None, why it cannot be used (None when absent or usable), new source times to record or None):
    the file must index `files` as they are now, complete and undamaged."""
    if not path.exists():
        return None, None, None
    try:
        index = IndexFile(path)
    except (IndexFormatError, ValueError, OSError) as err:
        return None, f"the file is unreadable ({err})", None
    header = index.header
    if header.get("format") != FORMAT or header.get("kind") != kind_of(dataset):
        return None, "it was built by another version of this code", None
    if [s["name"] for s in header["sources"]] != [Path(f).name for f in files]:
        return None, "its source files are others", None
    times = []
    for stored, source in zip(header["sources"], files):
        now = source_state(source, with_hash=False)
        if now["size"] != stored["size"]:
            return None, f"{source} changed", None
        if now["mtime_ns"] != stored["mtime_ns"] and content_hash(source) != stored["sha256"]:
            return None, f"{source} changed", None
        times.append(now["mtime_ns"])  # touched but the same content: the index stays, with the new time
    try:
        index.verify()
    except IndexFormatError as err:
        return None, f"the file is corrupt ({err})", None
    changed = times != [s["mtime_ns"] for s in header["sources"]]
    return index, None, times if changed else None


@contextlib.contextmanager
def build_lock(path, log):
    """An exclusive flock on path + ".lock" (released by the kernel however its holder ends); says so when another
    process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a+") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process to build {path}")
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def open_split_index(files, dataset, split, cache_dir=None, log=print):
    """The SplitIndex of a split made of `files`, built (once per node) when no current index exists. An index
    beside the files that is current is used even when their folder is read-only (built there by someone else)."""
    files = [require_index_file(f, dataset) for f in files]
    path = cache_path(files, dataset, split, cache_dir)
    if cache_dir is None and path != beside(files, dataset, split):
        index, _, times = check_cache(beside(files, dataset, split), files, dataset)
        if index is not None and times is None:
            return SplitIndex(index, files, dataset)
    index, _, times = check_cache(path, files, dataset)
    if index is not None and times is None:
        return SplitIndex(index, files, dataset)
    with build_lock(path, log):
        index, why, times = check_cache(path, files, dataset)  # built or refreshed meanwhile by another process?
        if index is not None:
            if times is not None:
                sources = [dict(s, mtime_ns=t) for s, t in zip(index.header["sources"], times)]
                if refresh_header(path, {"sources": sources}):
                    index = IndexFile(path)
            return SplitIndex(index, files, dataset)
        log(f"rebuilding the index {path}: {why}" if why else
            f"indexing {', '.join(str(f) for f in files)} (once; every process then maps {path})")
        start = time.perf_counter()
        sources = [source_state(f) for f in files]
        columns, images = assemble(read_parts(files, dataset))
        rows = sum(len(piece) for piece in columns["line"])
        write_index(path, columns, {"format": FORMAT, "kind": kind_of(dataset), "rows": rows, "images": images,
                                    "sources": sources})
        log(f"indexed {rows} expressions of {images} images in {time.perf_counter() - start:.1f} s")
        return SplitIndex(IndexFile(path), files, dataset)


class Strings:
    """A string column of an index: the text of row r without decoding any other."""

    def __init__(self, index, name):
        self.map, self.offsets = index.map, index.columns[f"{name}.offsets"]
        self.start = index.position(f"{name}.bytes")

    def raw(self, r):
        a, b = self.offsets[r], self.offsets[r + 1]
        return self.map[self.start + int(a):self.start + int(b)]

    def __getitem__(self, r):
        return self.raw(r).decode("utf-8", "surrogatepass")

    def lengths(self):
        return np.diff(self.offsets)


class SplitIndex:
    """The rows of a split, read from its index file: row(r) gives what the source held (image file, box as stored
    or None, phrase, the other fields); the columns give what is needed of every row at once (image numbers, target
    counts, which rows have masks, COCO ids) without a Python object per row."""

    def __init__(self, index, files, dataset):
        self.file, self.files, self.dataset = index, [Path(f) for f in files], dataset
        self.jsonl = not is_builtin(dataset)
        columns = index.columns
        self.image, self.box, self.line = columns["image"], columns["box"], columns["line"]
        self.source, self.coco_id = columns.get("source"), columns.get("coco_id")
        self.targets, self.target_offsets = columns.get("targets"), columns.get("target_offsets")
        self.target_boxes = columns.get("target_boxes")
        self.names, self.phrases = Strings(index, "image_names"), Strings(index, "phrase")
        self.masks = Strings(index, "mask") if "mask.offsets" in columns else None
        self.extras = Strings(index, "extra") if "extra.offsets" in columns else None
        self._image_names = None

    def __len__(self):
        return len(self.image)

    def __reduce__(self):  # a spawned worker maps the file again instead of receiving a copy of its columns
        return SplitIndex, (self.file, self.files, self.dataset)

    def image_names(self):
        """Every image file of the split, by image number."""
        if self._image_names is None:
            self._image_names = [self.names[k] for k in range(len(self.names.offsets) - 1)]
        return self._image_names

    def row(self, r):
        """(image file, [4 box numbers] as stored or None, phrase, extra): a JSONL row's extra as check_record gives
        it (type, id, coco_id, then mask, or boxes and masks), a built-in row's its tuple's id and attribute."""
        stored = self.extras.raw(r) if self.extras is not None else b""
        extra = loads(stored) if stored else {}
        box = self.box[r]
        box = None if math.isnan(box[0]) else box.tolist()
        if self.coco_id is not None and self.coco_id[r] >= 0:
            extra["coco_id"] = int(self.coco_id[r])
        mask = self.masks.raw(r) if self.masks is not None else b""
        targets = -1 if self.targets is None else int(self.targets[r])
        if targets < 0:
            if mask:
                extra["mask"] = loads(mask)
        else:
            extra["boxes"] = self.target_boxes[self.target_offsets[r]:self.target_offsets[r + 1]].tolist()
            if mask:
                extra["masks"] = loads(mask)
        return self.names[int(self.image[r])], box, self.phrases[r], extra

    def where(self, r):
        """A JSONL row's file:line."""
        return f"{self.files[0 if self.source is None else self.source[r]]}:{self.line[r]}"

    def target_counts(self):
        """How many objects each row's phrase refers to (1 for a "box" record and every built-in row)."""
        if self.targets is None:
            return np.ones(len(self), np.int32)
        return np.where(self.targets < 0, 1, self.targets)

    def boxes_form(self):
        """Which rows are "boxes" records (bool), or None when none is."""
        return None if self.targets is None else self.targets >= 0

    def mask_rows(self):
        """Which rows carry a mask (bool)."""
        return np.zeros(len(self), bool) if self.masks is None else self.masks.lengths() > 0
