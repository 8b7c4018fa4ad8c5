"""The index file: a split's columns in one file, opened by memory mapping (docs/data.md, "The index cache").

    MAGIC (8 bytes) | header length (uint32 LE) | header crc32 (uint32 LE) | header JSON, padded to 4 KiB pages
    | the columns, each at a 64-byte boundary

The header holds the format version, the columns ({name: dtype, shape, offset}), the length of the data, its crc32,
and what the builder records beside them (the sources' sizes, times and hashes). Nothing in the file is a Python
object: opening it reads the header and maps the rest; a process reads only the pages it touches, and every process
of a node that maps the file shares one copy of them in the page cache.
"""
import json
import mmap
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from utils.files import atomic_write

MAGIC = b"SEGVGIX\x00"
VERSION = 1
PREFIX = struct.Struct("<8sII")
PAGE, ALIGN = 4096, 64
SLACK = 1024  # room in the header for refreshing the sources' times in place
CHUNK = 1 << 24


class IndexFormatError(Exception):
    """The file is not a complete index of this format; the message says what is wrong with it."""


def aligned(offset, to):
    return -(-offset // to) * to


def encode_header(header):
    """The header's bytes: prefix and JSON, padded to its reserved length (header["reserved"])."""
    text = json.dumps(header, sort_keys=True).encode()
    room = header["reserved"] - PREFIX.size
    if len(text) > room:
        raise ValueError(f"index header of {len(text)} bytes does not fit its {room} reserved bytes")
    return PREFIX.pack(MAGIC, len(text), zlib.crc32(text)) + text + b" " * (room - len(text))


def write_index(path, columns, meta):
    """columns: {name: numpy array, or a list of arrays written one after another (one column, no copy made)};
    meta: JSON values kept in the header. Written atomically (utils.files)."""
    layout, offset = {}, 0
    pieces = {name: [np.ascontiguousarray(p) for p in (value if isinstance(value, list) else [value])]
              for name, value in columns.items()}
    for name, parts in pieces.items():
        if len({(p.dtype, p.shape[1:]) for p in parts}) != 1:
            raise ValueError(f"column {name}: pieces of different types or shapes")
        offset = aligned(offset, ALIGN)
        shape = [sum(len(p) for p in parts), *parts[0].shape[1:]]
        layout[name] = {"dtype": parts[0].dtype.str, "shape": shape, "offset": offset}
        offset += sum(p.nbytes for p in parts)
    header = {**meta, "version": VERSION, "columns": layout, "data_size": offset, "reserved": 0, "crc32": 0}
    reserved = aligned(PREFIX.size + len(json.dumps(header, sort_keys=True)) + 64 + SLACK, PAGE)

    def write(f):
        f.write(b"\0" * reserved)  # the header goes last, once the checksum is known
        crc, written = 0, 0
        for name, parts in pieces.items():
            padding = b"\0" * (layout[name]["offset"] - written)
            f.write(padding)
            crc = zlib.crc32(padding, crc)
            for part in parts:
                if part.size:
                    data = memoryview(part.reshape(-1).view(np.uint8))
                    f.write(data)
                    crc = zlib.crc32(data, crc)
            written = layout[name]["offset"] + sum(p.nbytes for p in parts)
        f.seek(0)
        f.write(encode_header({**header, "reserved": reserved, "crc32": crc}))

    atomic_write(path, write)


def read_header(f):
    """The header of an open index file; IndexFormatError when it is not one of this format."""
    prefix = f.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise IndexFormatError("truncated: no header")
    magic, length, crc = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise IndexFormatError("not an index file (wrong magic bytes)")
    text = f.read(length)
    if len(text) != length or zlib.crc32(text) != crc:
        raise IndexFormatError("damaged header (checksum mismatch)")
    header = json.loads(text)
    if header.get("version") != VERSION:
        raise IndexFormatError(f"format version {header.get('version')}, this code reads {VERSION}")
    return header


def data_crc32(f, start, size):
    crc, buffer = 0, bytearray(CHUNK)
    f.seek(start)
    while size > 0:
        n = f.readinto(memoryview(buffer)[:min(CHUNK, size)])
        if not n:
            break
        crc = zlib.crc32(memoryview(buffer)[:n], crc)
        size -= n
    return crc


class IndexFile:
    """An index file, mapped read-only: .header, .columns {name: read-only numpy array over the map}. Opening
    checks the header and the file's length; verify() reads the data once and compares its checksum. A process that
    receives the object (pickled to a spawned DataLoader worker) maps the file again."""

    def __init__(self, path):
        self.path = Path(path)
        with self.path.open("rb") as f:
            self.header = read_header(f)
            self.start, size = self.header["reserved"], self.header["data_size"]
            actual = os.fstat(f.fileno()).st_size
            if actual != self.start + size:
                raise IndexFormatError(f"truncated: {actual} of {self.start + size} bytes")
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.columns = {}
        for name, spec in self.header["columns"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            count = int(np.prod(shape))
            self.columns[name] = (np.frombuffer(self.map, dtype, count, self.start + spec["offset"]).reshape(shape)
                                  if count else np.empty(shape, dtype))

    def verify(self):
        """IndexFormatError when the data's checksum is not the header's (a file damaged at rest)."""
        with self.path.open("rb") as f:
            if data_crc32(f, self.start, self.header["data_size"]) != self.header["crc32"]:
                raise IndexFormatError("damaged data (checksum mismatch)")

    def position(self, name):
        """Where column name's bytes start in the map."""
        return self.start + self.header["columns"][name]["offset"]

    def __reduce__(self):
        return IndexFile, (self.path,)


def refresh_header(path, changes):
    """Rewrite the header of path in place with `changes` applied (the data is untouched). False when they do not
    fit the reserved room; a write cut short leaves a header whose checksum fails, so the file is rebuilt then."""
    with Path(path).open("r+b") as f:
        header = read_header(f)
        try:
            data = encode_header({**header, **changes})
        except ValueError:
            return False
        f.seek(0)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True
