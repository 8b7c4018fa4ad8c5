"""predict.py at scale: two processes (torchrun, gloo) write the records of one process in the same order, and a run
SIGKILLed at any point continues with --auto_resume to every input exactly once."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import free_port, noise_image, write_tiny_checkpoint

import predict
from inference.prediction_run import keep_complete_lines, read_lines

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ["the red circle", "a blue one"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    checkpoint = write_tiny_checkpoint(folder / "model.pth")
    images = folder / "images"
    images.mkdir()
    for k in range(24):
        noise_image(images / f"{k:02d}.png", 30 + 7 * k, 100 - 3 * k, seed=k)
    (images / "99_broken.png").write_bytes(b"not an image")
    return checkpoint, images


def command(inputs, output_dir, *extra):
    checkpoint, images = inputs
    flags = ["--checkpoint", str(checkpoint), "--images", str(images), "--batch_size", "2", "--device", "cpu",
             "--save_masks", "--output_dir", str(output_dir)]
    for phrase in PHRASES:
        flags += ["--phrase", phrase]
    return flags + list(extra)


def torchrun(nproc, flags):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), str(ROOT / "predict.py"), *flags]


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """One process, uninterrupted."""
    out = tmp_path_factory.mktemp("one") / "preds"
    predict.main(command(inputs, out))
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def assert_same_records(records, reference, output_dir):
    assert [r["index"] for r in records] == [r["index"] for r in reference] == list(range(48))  # broken one skipped
    for got, expected in zip(records, reference):
        assert (got["image"], got["phrase"], got["image_size"]) == (expected["image"], expected["phrase"],
                                                                     expected["image_size"])
        np.testing.assert_allclose(got["box"], expected["box"], atol=0.011)  # records round to 0.01 pixel
        assert Path(got["mask"]).parent == Path(output_dir) / "masks" and Path(got["mask"]).is_file()
        assert Path(got["mask"]).name == Path(expected["mask"]).name


def test_two_processes_write_the_records_of_one(inputs, reference, tmp_path):
    out = tmp_path / "preds"
    done = subprocess.run(torchrun(2, command(inputs, out)), capture_output=True, text=True, env=environment(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert_same_records(records, reference, out)
    assert not (out / "parts").exists() and "48 prediction records written" in done.stderr
    assert "skipped" in done.stderr and "99_broken.png" in done.stderr


def part_lines(out):
    return sum(path.read_bytes().count(b"\n") for path in (out / "parts").glob("part_*.jsonl"))


@pytest.mark.slow
@pytest.mark.parametrize("when", ["batch boundary", "mid-batch"])
def test_sigkill_then_auto_resume_gives_every_input_once(inputs, reference, tmp_path, when, capsys):
    out = tmp_path / "preds"
    process = subprocess.Popen(torchrun(2, command(inputs, out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=environment(), start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (out / "parts").is_dir() and part_lines(out) >= (2 if when == "batch boundary" else 5):
            break
        time.sleep(0.002)
    if when == "mid-batch":
        time.sleep(0.02)  # into the next forward pass or write
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers, with no chance to clean up
    process.wait()
    assert process.returncode != 0, "the run ended before it was killed: give it more inputs"
    written = part_lines(out)
    assert 0 < written < 50
    if when == "mid-batch":  # what a write cut short leaves: half a line, and a whole record without its newline
        with open(out / "parts" / "part_1.jsonl", "ab") as part:
            part.write(b'{"index": 46, "ima')
        with open(out / "parts" / "part_0.jsonl", "ab") as part:
            part.write(json.dumps(reference[44]).encode())  # its mask is another run's: it must not be taken

    with pytest.raises(ValueError, match="--auto_resume to continue"):  # no silent overwrite
        predict.main(command(inputs, out))
    resumed = subprocess.run(torchrun(2, command(inputs, out, "--auto_resume")), capture_output=True, text=True,
                             env=environment(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already done" in resumed.stderr
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert_same_records(records, reference, out)
    # A finished run resumed again has nothing left to do and keeps its records.
    capsys.readouterr()
    predict.main(command(inputs, out, "--auto_resume"))
    assert "48 of 50 inputs already done" in capsys.readouterr().err
    assert (out / "predictions.jsonl").read_text().splitlines() == [json.dumps(r) for r in records]


def test_a_torn_last_line_is_never_read_and_is_cut(tmp_path):
    part = tmp_path / "part_0.jsonl"
    part.write_bytes(b'{"index": 0}\n{"index": 1}\n{"index": 2}')  # the last line parses but was not finished
    assert read_lines(part) == [{"index": 0}, {"index": 1}]
    keep_complete_lines(part)
    assert part.read_bytes() == b'{"index": 0}\n{"index": 1}\n'


def test_shards_run_apart_then_merged(inputs, reference, tmp_path, capsys):
    """--shard K/N (SLURM array tasks): each writes its part; the same command without --shard merges."""
    out = tmp_path / "preds"
    predict.main(command(inputs, out, "--shard", "1/2"))
    assert "shard 1/2 done" in capsys.readouterr().err and not (out / "predictions.jsonl").exists()
    with pytest.raises(ValueError, match="--auto_resume to continue"):
        predict.main(command(inputs, out, "--shard", "0/2"))
    predict.main(command(inputs, out, "--shard", "0/2", "--auto_resume"))
    capsys.readouterr()
    records = predict.main(command(inputs, out, "--auto_resume"))
    assert "50 of 50 inputs already done" in capsys.readouterr().err  # the broken image's two pairs included
    assert_same_records(records, reference, out)
    with pytest.raises(ValueError, match="--shard"):
        predict.main(command(inputs, out, "--shard", "2/2"))
