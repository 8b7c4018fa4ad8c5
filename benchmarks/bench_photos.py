"""Phone-size photos through SegVGPredictor: a JPEG decoded at a reduced scale (the default) against decoded whole
(--full_decode), with glibc keeping freed memory (as predict.py and app.py set it) or its defaults, and against
another checkout as it is (docs/performance.md, "Phone photos").

    python -m benchmarks.bench_photos --checkpoint outputs/demo/best_checkpoint.pth [--compare ../segvg-main]
    python -m benchmarks.bench_photos --full_size                 # the full model (ResNet-101, 640 px) instead

Writes a 12 MP (4000 x 3000) and a 48 MP (8000 x 6000) JPEG with photo-like content, then in a fresh process per
figure (the variants alternating round by round): the seconds a phrase takes (predictor(path, phrase), the image read
each time) and the process's peak memory, medians over --rounds; and the largest difference between the variants'
boxes, in pixels of the model's canvas.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.checkpoints import PEAK_MB, ROOT, write_checkpoint

FIGURE = PEAK_MB + r"""
import json, sys, time
from inference import SegVGPredictor
checkpoint, photo, reduced, repeats = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
if sys.argv[5] == "keep":  # as predict.py and app.py set it
    from utils.runtime import keep_freed_memory
    keep_freed_memory()
options = {} if sys.argv[3] == "-" else {"reduced_decode": reduced}
predictor = SegVGPredictor.from_checkpoint(checkpoint, device="cpu", **options)
predictor(photo, "the thing")  # warm
seconds = []
for _ in range(repeats):
    start = time.perf_counter()
    result = predictor(photo, "the thing")
    seconds.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(seconds)[len(seconds) // 2], "box": result["box"], "peak_mb": peak_mb(),
                  "imsize": predictor.args.imsize}))
"""


def write_photo(path, width, height):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((width, height),
                                                                                        Image.BICUBIC)
    grain = rng.normal(0, 6, (height, width, 3))
    Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def figure(tree, checkpoint, photo, decode, allocator, repeats):
    proc = subprocess.run([sys.executable, "-c", FIGURE, str(checkpoint), str(photo), decode, str(repeats), allocator],
                          cwd=tree, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_photos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="", help="the model to run (default with --full_size: ResNet-101)")
    parser.add_argument("--full_size", action="store_true", help="the full model (parity case A's weights)")
    parser.add_argument("--compare", default="", help="another checkout of this project (its predictor as it is)")
    parser.add_argument("--rounds", default=3, type=int, help="fresh processes per variant and photo")
    parser.add_argument("--repeats", default=7, type=int, help="predictions timed in each process (median)")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if not opts.checkpoint and not opts.full_size:
        sys.exit("give --checkpoint CKPT or --full_size")
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(opts.checkpoint or Path(folder) / "full.pth")
        if not opts.checkpoint:
            write_checkpoint(checkpoint, [])
        photos = {"12 MP": write_photo(Path(folder) / "12mp.jpg", 4000, 3000),
                  "48 MP": write_photo(Path(folder) / "48mp.jpg", 8000, 6000)}
        # name: (checkout, decode, allocator); predict.py and app.py keep glibc's freed memory since this change
        variants = {"reduced decode": (ROOT, "1", "keep"), "reduced decode, glibc defaults": (ROOT, "1", "system"),
                    "full decode": (ROOT, "0", "keep")}
        if opts.compare:
            variants["compare (as it is)"] = (Path(opts.compare).resolve(), "-", "system")
        runs = {(p, v): [] for p in photos for v in variants}
        for _ in range(opts.rounds):
            for name, photo in photos.items():
                for variant, (tree, decode, allocator) in variants.items():
                    runs[(name, variant)].append(figure(tree, checkpoint.resolve(), photo, decode, allocator,
                                                        opts.repeats))
        print(f"{checkpoint if opts.checkpoint else 'the full-size model'}; medians of {opts.rounds} processes x "
              f"{opts.repeats} predictions")
        against = "compare (as it is)" if opts.compare else "full decode"
        print(f"| photo | variant | seconds a phrase (min-max) | peak memory | speed-up over {against} "
              f"| box difference (canvas px) |")
        print("|---|---|---|---|---|---|")
        for name in photos:
            base = statistics.median(r["seconds"] for r in runs[(name, against)])
            reference = runs[(name, "full decode")][0]
            for variant in variants:
                values = runs[(name, variant)]
                every = [r["seconds"] for r in values]
                seconds = statistics.median(every)
                scale = (4000 if name == "12 MP" else 8000) / values[0]["imsize"]
                diff = max(abs(a - b) for r in values for a, b in zip(r["box"], reference["box"])) / scale
                peak = statistics.median(r["peak_mb"] for r in values)
                print(f"| {name} | {variant} | {seconds:.3f} ({min(every):.3f}-{max(every):.3f}) | {peak:.0f} MB "
                      f"| {base / seconds:.2f}x | {diff:.2f} |")


if __name__ == "__main__":
    main()
