"""Nothing lost, nothing misleading: a rerun into a folder holding a checkpoint is refused (the checkpoint untouched),
resumed with --auto_resume or started over with --overwrite, and resuming with other model flags names them; an
oversized image is refused from its header before any decoding (memory measured); each unreadable file says its cause;
a large JPEG decoded at a reduced scale gives the full decode's boxes; a read-only array is resized without a
warning; prediction's allocator setting keeps a freed full-size mask's memory for the next one."""
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN, make_demo, write_tiny_checkpoint
from PIL import Image

import train
from datasets.images import ImageError, read_photo
from datasets.transforms import resize
from inference import SegVGPredictor
from models.checkpoint import safe_load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_demo(tmp_path_factory, seed=4, train=16, holdout=4)


def run(demo_root, output_dir, *extra):
    args = train.get_args_parser().parse_args(TINY_TRAIN + [
        "--dataset", "demo", "--data_root", str(demo_root), "--split_root", str(demo_root / "split"),
        "--output_dir", str(output_dir), "--epochs", "1", *extra])
    train.main(args)
    return safe_load(output_dir / "checkpoint_latest.pth")


def test_a_rerun_never_silently_replaces_a_run(demo_root, tmp_path, capsys):
    out = tmp_path / "run"
    first = run(demo_root, out)
    before = (out / "checkpoint_latest.pth").read_bytes()
    with pytest.raises(ValueError, match=rf"holds .*checkpoint_latest\.pth \(step {first['step']}\): continue that run "
                                         r"with --auto_resume, or start over with --overwrite"):
        run(demo_root, out)
    assert (out / "checkpoint_latest.pth").read_bytes() == before
    # A longer schedule goes on, the difference named.
    longer = run(demo_root, out, "--auto_resume", "--epochs", "2")
    assert longer["step"] == 2 * first["step"] and "flags that differ from its run: --epochs 1 -> 2" in \
        capsys.readouterr().out
    # Another model refuses, naming the flags.
    with pytest.raises(ValueError, match=r"other model or dataset flags \(--epochs 2 -> 3, --hidden_dim 32 -> 48.*"
                                         r"--allow_flag_changes to go on anyway, or --overwrite"):
        run(demo_root, out, "--auto_resume", "--epochs", "3", "--hidden_dim", "48", "--vl_hidden_dim", "48")
    started = run(demo_root, out, "--overwrite")
    assert started["step"] == first["step"] and "--overwrite: starting over in" in capsys.readouterr().out


def bomb_png(path, side=20000):
    """A 1-bit PNG of side x side pixels (about 60 KB on disk, 1.2 GB once decoded to RGB)."""
    row = b"\x00" + bytes(side // 8)
    compressor, body = zlib.compressobj(9), []
    for _ in range(side):
        body.append(compressor.compress(row))
    body.append(compressor.flush())

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return path


PEAK = """
import sys, time
from inference.app_request import read_upload, RequestError
def kb(field):
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(field)))
before = kb("VmRSS")
start = time.perf_counter()
try:
    read_upload(sys.argv[1], "apply", int(sys.argv[2]))
except RequestError as err:
    print(err)
print(time.perf_counter() - start, (kb("VmHWM") - before) / 1024)
"""


def test_an_oversized_image_is_refused_before_decoding(tmp_path):
    bomb = bomb_png(tmp_path / "bomb20k.png")
    done = subprocess.run([sys.executable, "-c", PEAK, str(bomb), "64000000"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    message, figures = done.stdout.strip().splitlines()
    seconds, megabytes = (float(v) for v in figures.split())
    assert message == ("bomb20k.png cannot be used: too large: 400 megapixels, above the limit of 64 megapixels "
                       "(--max_image_pixels); downscale it, or raise the limit.")
    assert seconds < 1.0 and megabytes < 100  # a decode would take 1.2 GB
    with pytest.raises(ImageError, match="too large: 400 megapixels, above the limit of 179 megapixels"):
        read_photo(bomb, max_pixels=500_000_000)  # beyond Pillow's own refusal, which still holds
    Image.new("RGB", (300, 200)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="small.png is too large: 300 x 200 pixels, 0.06 megapixels, above the limit "
                                         "of 0.05 megapixels"):
        read_photo(tmp_path / "small.png", max_pixels=50_000)
    # predict.py says so and goes on with the other images.
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "fine.png")
    (tmp_path / "small.png").unlink()
    out = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(checkpoint), "--images",
                          str(tmp_path / "*.png"), "--phrase", "the red one", "--device", "cpu", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "bomb20k.png is too large: 400 megapixels" in out.stderr
    assert [json.loads(line)["image"].endswith("fine.png") for line in out.stdout.splitlines()] == [True]


def test_each_unreadable_file_says_why(tmp_path, monkeypatch):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    files = {"cut.jpg": data[:len(data) // 2], "broken.png": b"\x89PNG\r\n\x1a\n" + b"rubbish" * 20,
             "doc.jpg": b"%PDF-1.7\n" + b"x" * 100, "empty.png": b"", "notes.png": b"just some text " * 10}
    causes = {"cut.jpg": "a truncated JPEG: the file ends before its pixels do", "broken.png": "a corrupt PNG",
              "doc.jpg": "a PDF document, not an image", "empty.png": "an empty file",
              "notes.png": "not an image: its first bytes are no image format this code reads"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageError, match=f"cannot read image .*{name}: {causes[name]}"):
            read_photo(tmp_path / name)
    heic = tmp_path / "phone.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40)
    monkeypatch.setattr("datasets.images.heif_available", lambda: False)
    with pytest.raises(ImageError, match="need the pillow-heif package: pip install pillow-heif"):
        read_photo(heic)


def test_a_large_jpeg_decoded_reduced_gives_the_full_decodes_boxes(tmp_path):
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(small).resize((4000, 3000), Image.BICUBIC))
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=92)
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth")
    reduced = SegVGPredictor.from_checkpoint(checkpoint, device="cpu")
    full = SegVGPredictor.from_checkpoint(checkpoint, device="cpu", reduced_decode=False)
    rgb, _, size = reduced.load(tmp_path / "photo.jpg")
    assert size == (4000, 3000) and rgb.shape[1] < 4000 and max(rgb.shape[:2]) >= 2 * reduced.args.imsize
    for a, b in zip(reduced(tmp_path / "photo.jpg", ["a", "the thing"]), full(tmp_path / "photo.jpg",
                                                                             ["a", "the thing"])):
        assert a["image_size"] == b["image_size"] == [4000, 3000] and a["mask"].shape == (3000, 4000)
        canvas_pixel = 4000 / reduced.args.imsize  # image pixels per canvas pixel
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= canvas_pixel


def test_a_read_only_array_is_resized_without_a_warning():
    image = np.asarray(Image.new("RGB", (64, 48), (1, 2, 3)))
    assert not image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resize(image, 32, 24).shape == (24, 32, 3)


FAULTS = r"""
import json, resource, sys
import numpy as np
from utils.runtime import keep_freed_memory
line = keep_freed_memory()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    mask = np.ones((3000, 4000), np.float32)  # a 12 MP photo's mask, 48 MB
    del mask
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"line": line, "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_allocator_setting_reuses_a_freed_mask(tmp_path):
    def faults(**env):
        env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", ""), **env}
        proc = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True)
        return json.loads(proc.stdout)

    kept, system = faults(), faults(SEGVG_ALLOCATOR="system")
    assert "keeping freed memory" in kept["line"] and system["line"] is None
    # the first mask faults its pages in either way; afterwards only glibc's defaults fault them in again
    assert kept["faults"][0] > 100 and max(kept["faults"][1:]) < kept["faults"][0] / 10
    assert min(system["faults"][1:]) > system["faults"][0] / 2
