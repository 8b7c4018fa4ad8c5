"""Building a split's columns from its source files: JSONL records streamed line by line (large files in chunks, on
several processes), a built-in dataset's index tuples. Every record is checked by the rules the validator applies;
the first bad one stops the build with its file and line."""
import json
import math
import multiprocessing
import os
import sys
from array import array
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import orjson
from tqdm import tqdm

from ..catalog import check_entry, is_builtin, load_entries
from ..records import RecordError, check_record

NAN4 = (math.nan,) * 4
CHUNK_BYTES = 64 << 20  # a JSONL file larger than two of these is read by several processes
MAX_WORKERS = 16


def dumps(value):
    """JSON bytes of a stored field (orjson; json for what it refuses, such as integers beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, default=str).encode()


def loads(data):
    """JSON bytes' value: orjson, or json's own error (and its acceptance of NaN, a byte-order mark) where orjson
    refuses."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def encode(text):
    return text.encode("utf-8", "surrogatepass")


class Strings:
    """A string column being built: the bytes one after another, and where each ends."""

    def __init__(self):
        self.data, self.ends = bytearray(), array("Q")

    def add(self, data):
        self.data += data
        self.ends.append(len(self.data))


class Part:
    """The rows of one stretch of a source (a chunk of a JSONL file, or a built-in index file), as growing columns.
    Picklable, so that a chunk built in another process comes back whole."""

    def __init__(self, source=0):
        self.source = source
        self.names = {}  # image file -> its number in this part
        self.image, self.line, self.targets, self.coco = array("i"), array("I"), array("i"), array("q")
        self.box, self.target_boxes = array("d"), array("d")
        self.phrase, self.mask, self.extra = Strings(), Strings(), Strings()
        self.lines = 0       # lines read (JSONL: blank ones too, for the line numbers of the next chunk)
        self.first_line = 0  # added to the line numbers: the lines of the file before this chunk
        self.error = None    # (line, message) of the first bad row

    def __len__(self):
        return len(self.image)

    def add(self, line, image, box, phrase, extra, stored):
        """One checked row; stored: the fields kept as JSON beside the columns (type and id, or a built-in
        dataset's id and attribute)."""
        self.image.append(self.names.setdefault(image, len(self.names)))
        self.line.append(line)
        self.box.extend(NAN4 if box is None else box)
        self.phrase.add(encode(phrase))
        boxes = extra.get("boxes")
        if boxes is None:
            self.targets.append(-1)  # a "box" record: one target, no list
        else:
            self.targets.append(len(boxes))
            for target in boxes:
                self.target_boxes.extend(target)
        mask = extra.get("mask", extra.get("masks"))
        self.mask.add(b"" if mask is None else dumps(mask))
        self.extra.add(dumps(stored) if stored else b"")
        self.coco.append(extra.get("coco_id", -1))


def jsonl_part(path, start, end, source=0):
    """The records of path's bytes [start, end) (whole lines), lines numbered from 1 at start."""
    part = Part(source)
    with open(path, "rb") as f:
        f.seek(start)
        position = start
        for n, line in enumerate(f, 1):
            if position >= end:
                break
            position += len(line)
            part.lines = n
            if not line.strip():
                continue
            try:
                record = loads(line)
            except json.JSONDecodeError as err:
                part.error = (n, f"malformed JSON ({err.msg} at column {err.colno}); fix or remove the line")
                return part
            except UnicodeDecodeError:
                part.error = (n, "not UTF-8 text; save the file as UTF-8")
                return part
            try:
                image, box, phrase, extra = check_record(record)
            except ValueError as err:
                part.error = (n, str(err))
                return part
            part.add(n, image, box, phrase, extra, {k: extra[k] for k in ("type", "id") if k in extra})
    return part


def chunk_bounds(path, size, chunk_bytes):
    """[(start, end)] of about chunk_bytes each, cut after a newline."""
    bounds, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + chunk_bytes, size))
            f.readline()
            end = min(f.tell(), size) if start + chunk_bytes < size else size
            bounds.append((start, end))
            start = end
    return bounds


def workers_available():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def jsonl_parts(path, source):
    """The Parts of a JSONL file, in order; a file of more than two chunks is read by several processes. They are
    forked where the platform allows it, as DataLoader workers are: they run plain Python on the file (nothing of
    CUDA or of a process group), and a spawned one would run again a calling script that lacks a main guard."""
    size = os.path.getsize(path)
    bounds = chunk_bounds(path, size, CHUNK_BYTES)
    if not bounds:
        return [Part(source)]
    workers = min(workers_available(), len(bounds), MAX_WORKERS)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"indexing {os.path.basename(path)}",
               disable=size < CHUNK_BYTES, leave=False)
    with bar:
        if workers < 2 or len(bounds) < 3:
            parts = []
            for start, end in bounds:
                parts.append(jsonl_part(path, start, end, source))
                bar.update(end - start)
                if parts[-1].error:
                    break
            return parts
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(jsonl_part, path, start, end, source) for start, end in bounds]
            parts = []
            for future, (start, end) in zip(futures, bounds):
                parts.append(future.result())
                bar.update(end - start)
            return parts


def tuple_part(path, dataset, source):
    """The tuples of a built-in dataset's index file; entries are numbered from 0, as the validator names them."""
    part = Part(source)
    for n, entry in enumerate(load_entries(path, dataset)):
        try:
            file_name, values, phrase, extra = check_entry(entry, dataset)
        except ValueError as err:
            part.error = (n, str(err))
            return part
        part.add(n, file_name, values, phrase, {}, extra)
    return part


def read_parts(files, dataset):
    """Every source file's Parts, in order; RecordError (JSONL) or ValueError (index tuples) naming the first bad
    row's file and line (or entry)."""
    parts = []
    for source, path in enumerate(files):
        if is_builtin(dataset):
            part = tuple_part(path, dataset, source)
            if part.error:
                n, message = part.error
                raise ValueError(f"{path}[{n}]: malformed index entry: {message}. Run `python -m datasets.validate` "
                                 f"on this dataset.")
            parts.append(part)
            continue
        before = 0
        for part in jsonl_parts(path, source):
            if part.error:
                n, message = part.error
                raise RecordError(f"{path}:{before + n}: {message}")
            part.first_line = before
            before += part.lines
            parts.append(part)
    return parts


def offsets_of(pieces_of_ends):
    """[ends of each part's strings (relative to its part)] -> one offsets column [rows + 1]: uint32 where the bytes
    allow it."""
    pieces, base = [np.zeros(1, np.uint64)], 0
    for ends in pieces_of_ends:
        ends = np.frombuffer(ends, np.uint64) if len(ends) else np.zeros(0, np.uint64)
        pieces.append(ends + np.uint64(base))
        base += int(ends[-1]) if len(ends) else 0
    dtype = np.uint32 if base < 1 << 32 else np.uint64
    return [piece.astype(dtype, copy=False) for piece in pieces]


def compact(pieces):
    """Float pieces as float32 where that changes no value (NaN stays NaN), else float64."""
    fits = all(np.array_equal(p.astype(np.float32).astype(np.float64), p, equal_nan=True) for p in pieces)
    return [p.astype(np.float32) for p in pieces] if fits else pieces


def strings_columns(name, strings):
    """name.offsets and name.bytes of a list of Strings, one per part."""
    return {f"{name}.offsets": offsets_of([s.ends for s in strings]),
            f"{name}.bytes": [np.frombuffer(s.data, np.uint8) for s in strings]}


def assemble(parts):
    """Parts -> {column: [pieces]}: image numbers over all parts (in order of first use), strings with offsets,
    boxes; the optional columns only where some row needs them."""
    names = {}
    image = []
    for part in parts:
        numbers = np.array([names.setdefault(name, len(names)) for name in part.names], np.int32)
        image.append(numbers[np.frombuffer(part.image, np.int32)] if len(part) else np.zeros(0, np.int32))
    name_table = Strings()
    for name in names:
        name_table.add(encode(name))
    columns = {"image": image, **strings_columns("image_names", [name_table]),
               **strings_columns("phrase", [p.phrase for p in parts]),
               "box": compact([np.frombuffer(p.box, np.float64).reshape(-1, 4) for p in parts]),
               "line": [np.frombuffer(p.line, np.uint32) + np.uint32(p.first_line) for p in parts]}
    if any(p.source for p in parts):
        columns["source"] = [np.full(len(p), p.source, np.uint8) for p in parts]
    targets = [np.frombuffer(p.targets, np.int32) for p in parts]
    if any((t != -1).any() for t in targets):
        counts = np.concatenate([np.zeros(1, np.int64)] + [np.maximum(t, 0) for t in targets])
        columns["targets"] = targets
        columns["target_offsets"] = [np.cumsum(counts)]
        columns["target_boxes"] = compact([np.frombuffer(p.target_boxes, np.float64).reshape(-1, 4) for p in parts])
    for name in ("mask", "extra"):
        strings = [getattr(p, name) for p in parts]
        if any(s.data for s in strings):
            columns.update(strings_columns(name, strings))
    coco = [np.frombuffer(p.coco, np.int64) for p in parts]
    if any((c >= 0).any() for c in coco):
        columns["coco_id"] = coco
    return columns, len(names)
