"""The split index (datasets/index): built once, opened warm without rebuilding, rebuilt when a source changes or the
file is damaged (and saying so), one builder when two processes open a split at once, the same records in DataLoader
workers (forked or spawned), JSONL read in parallel chunks with the right line numbers, and the cache folder when
the split's folder is read-only."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

import datasets.index as split_index
from datasets.index import build as index_build
from datasets.index import open_split_index
from datasets.index.format import IndexFile, IndexFormatError
from datasets.records import RecordError

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path, count, start=0, extra=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"image": f"img/{n % 7}.jpg", "phrase": f"thing number {n}",
                         "box": [n % 5, 1.5, 10 + n % 5, 20.25], **(extra or {})}) for n in range(start, start + count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def rows_of(index):
    return [index.row(r) for r in range(len(index))]


def test_build_then_warm_open_reads_the_records(tmp_path):
    source = write_jsonl(tmp_path / "mine" / "mine_train.jsonl", 50, extra={"type": "t", "id": 3})
    logs = []
    index = open_split_index([source], "mine", "train", log=logs.append)
    assert logs[0].startswith("indexing") and "indexed 50 expressions of 7 images" in logs[1]
    file_name, box, phrase, extra = index.row(12)
    assert (file_name, box, phrase, extra) == ("img/5.jpg", [2.0, 1.5, 12.0, 20.25], "thing number 12",
                                               {"type": "t", "id": 3})
    assert index.where(12) == f"{source}:13" and index.image_names()[:2] == ["img/0.jpg", "img/1.jpg"]
    # Boxes that float32 holds exactly are stored so; the file holds no Python object.
    assert index.box.dtype == np.float32 and (tmp_path / "mine" / "mine_train.index").is_file()
    inode = os.stat(tmp_path / "mine" / "mine_train.index").st_ino
    logs.clear()
    again = open_split_index([source], "mine", "train", log=logs.append)
    assert logs == [] and os.stat(tmp_path / "mine" / "mine_train.index").st_ino == inode
    assert rows_of(again) == rows_of(index)


def test_a_changed_source_rebuilds_a_touched_one_does_not(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "mine" / "mine_train.jsonl", 20)
    open_split_index([source], "mine", "train", log=lambda line: None)
    source.write_text("\n".join(reversed(source.read_text().splitlines())) + "\n")  # same size, other content
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10**9))
    logs = []
    index = open_split_index([source], "mine", "train", log=logs.append)
    assert "rebuilding" in logs[0] and "mine_train.jsonl changed" in logs[0]
    assert index.row(0)[2] == "thing number 19"
    # Touched, same content: kept (no rebuild), and its time noted so that the next open hashes nothing.
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10**9))
    logs.clear()
    open_split_index([source], "mine", "train", log=logs.append)
    assert not any("index" in line for line in logs)
    hashed = []
    monkeypatch.setattr(split_index, "content_hash", lambda path: hashed.append(path) or "")
    assert open_split_index([source], "mine", "train", log=logs.append).row(0)[2] == "thing number 19"
    assert hashed == [] and logs == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "header"])
def test_a_damaged_index_is_rebuilt_with_a_line_that_says_why(tmp_path, damage):
    source = write_jsonl(tmp_path / "mine" / "mine_train.jsonl", 30)
    open_split_index([source], "mine", "train", log=lambda line: None)
    path = tmp_path / "mine" / "mine_train.index"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
    elif damage == "truncate":
        data = data[:-7]
    else:
        data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError):
        IndexFile(path).verify()
    logs = []
    index = open_split_index([source], "mine", "train", log=logs.append)
    reason = {"flip": "damaged data (checksum mismatch)", "truncate": "truncated",
              "header": "damaged header"}[damage]
    assert logs[0].startswith(f"rebuilding the index {path}") and reason in logs[0], logs
    assert index.row(29)[2] == "thing number 29"


def test_builtin_tuples_and_trainval_over_two_files(tmp_path):
    import torch

    folder = tmp_path / "unc"
    folder.mkdir()
    rows = [(f"COCO_train2014_{n:012d}.jpg", f"{n}.pth", [1.9, 2.5, 30, 40], f"phrase {n}", ["a", 1]) for n in range(4)]
    torch.save(rows[:3], folder / "unc_train.pth")
    torch.save(rows[3:], folder / "unc_val.pth")
    index = open_split_index([folder / "unc_train.pth", folder / "unc_val.pth"], "unc", "trainval",
                             log=lambda line: None)
    assert len(index) == 4 and index.row(3) == (rows[3][0], [1.9, 2.5, 30.0, 40.0], "phrase 3",
                                                {"ann_id": "3.pth", "attribute": ["a", 1]})
    assert index.source.tolist() == [0, 0, 0, 1] and index.line.tolist() == [0, 1, 2, 0]
    assert index.box.dtype == np.float64  # 1.9 is not a float32


def test_jsonl_in_parallel_chunks_gives_the_rows_and_line_numbers_of_one_pass(tmp_path, monkeypatch):
    source = tmp_path / "mine" / "mine_train.jsonl"
    write_jsonl(source, 400, extra={"coco_id": 9})
    text = source.read_text().splitlines()
    text.insert(100, "")  # a blank line shifts the numbers of the lines after it
    source.write_text("\n".join(text) + "\n")
    one = open_split_index([source], "mine", "train", log=lambda line: None)
    monkeypatch.setattr(index_build, "CHUNK_BYTES", 4000)  # ~9 chunks, read by two processes
    monkeypatch.setattr(index_build, "workers_available", lambda: 2)
    parts = index_build.read_parts([source], "mine")
    assert len(parts) > 3
    columns, images = index_build.assemble(parts)
    assert images == 7
    lines = np.concatenate(columns["line"])
    assert lines.tolist() == one.line.tolist() and lines[100] == 102
    assert np.concatenate(columns["coco_id"]).tolist() == [9] * 400
    text[350] = '{"image": "img/1.jpg", "phrase": "x", "box": [5, 5, 5, 9]}'
    source.write_text("\n".join(text) + "\n")
    with pytest.raises(RecordError, match=r"mine_train\.jsonl:351: degenerate box"):
        index_build.read_parts([source], "mine")


BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import datasets.index as split_index
    build = split_index.read_parts
    def held(*args):  # the build goes on once the test says so
        for _ in range(1200):
            if Path(sys.argv[2]).exists():
                break
            time.sleep(0.05)
        return build(*args)
    split_index.read_parts = held
    index = split_index.open_split_index([sys.argv[1]], "mine", "train")
    print("rows", len(index), index.row(len(index) - 1)[2], flush=True)
""")


def test_two_processes_at_once_one_builds_the_other_waits(tmp_path):
    source = write_jsonl(tmp_path / "mine" / "mine_train.jsonl", 300)
    release = tmp_path / "release"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-c", BUILDER, str(source), str(release)]
    first, second = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2))
    starts = [first.stdout.readline(), second.stdout.readline()]  # one builds (holding the lock), one waits
    release.touch()
    outputs = [first.communicate(timeout=120), second.communicate(timeout=120)]
    assert first.returncode == 0 and second.returncode == 0, [err for _, err in outputs]
    builder = 0 if starts[0].startswith("indexing") else 1
    assert starts[1 - builder].startswith("waiting for another process to build"), starts
    assert "indexed 300 expressions" in outputs[builder][0]
    assert "indexing" not in outputs[1 - builder][0]
    for start, (out, _) in zip(starts, outputs):
        assert "rows 300 thing number 299" in out


def as_list(batch):
    return batch


class Rows(Dataset):
    def __init__(self, index):
        self.index = index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, r):
        return json.dumps(self.index.row(r))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_see_the_same_records(tmp_path, context):
    source = write_jsonl(tmp_path / "mine" / "mine_train.jsonl", 40, extra={"id": "x"})
    index = open_split_index([source], "mine", "train", log=lambda line: None)
    loader = DataLoader(Rows(index), batch_size=8, num_workers=2, multiprocessing_context=context,
                        collate_fn=as_list)
    assert [row for batch in loader for row in batch] == [json.dumps(index.row(r)) for r in range(len(index))]


def test_a_read_only_split_folder_indexes_into_the_cache_folder(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "mine" / "mine_train.jsonl", 10)
    monkeypatch.setattr(split_index.os, "access", lambda path, mode: False)  # root may write anywhere
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    index = open_split_index([source], "mine", "train", log=lambda line: None)
    built = list((tmp_path / "cache" / "segvg" / "index").glob("mine_train-*.index"))
    assert len(built) == 1 and index.file.path == built[0] and not (tmp_path / "mine" / "mine_train.index").exists()
    chosen = open_split_index([source], "mine", "train", cache_dir=tmp_path / "mine_cache", log=lambda line: None)
    assert chosen.file.path.parent == tmp_path / "mine_cache" and rows_of(chosen) == rows_of(index)
    # An index built beside the files (by whoever could write there) is used as it is.
    other = write_jsonl(tmp_path / "theirs" / "theirs_train.jsonl", 5)
    monkeypatch.undo()
    open_split_index([other], "theirs", "train", log=lambda line: None)
    monkeypatch.setattr(split_index.os, "access", lambda path, mode: False)
    logs = []
    assert open_split_index([other], "theirs", "train", log=logs.append).file.path.parent == other.parent
    assert logs == []
