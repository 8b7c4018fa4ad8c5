"""Opening the full-size model's weights from model.safetensors against torch.load of the .pth (docs/performance.md,
"Opening weights").

    python -m benchmarks.bench_weights [--rounds 5]

Writes the full-size model (ResNet-101, BERT-base, 640 px; parity case A's weights) as a training checkpoint would
hold it (its state dict, configuration and vocabulary) and exports it with tools/export_pretrained.py's code. Then, in
a fresh process per figure, the two alternating round by round: the weights read into memory (torch.load with
weights_only, or safetensors.torch.load_file, which maps the file), and the model ready to predict
(models.pretrained.load_from_checkpoint from the file or the folder: the weights read, the model built and loaded).
Medians (min-max) of the rounds, in seconds, with the peak memory (VmHWM) of the process.
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
start = time.perf_counter()
kind, path = sys.argv[1], sys.argv[2]
if kind == "read pth":
    import torch
    torch.load(path, map_location="cpu", weights_only=True)
elif kind == "read safetensors":
    from safetensors.torch import load_file
    load_file(path)
else:
    from models.pretrained import load_from_checkpoint
    load_from_checkpoint(path)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": peak_mb()}))
"""


def figure(kind, path):
    proc = subprocess.run([sys.executable, "-c", FIGURE, kind, str(path)], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", default=5, type=int, help="rounds, each measuring every figure once")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    from models.pretrained import load_from_checkpoint, write_layout

    with tempfile.TemporaryDirectory() as folder:
        pth = Path(folder) / "model.pth"
        write_checkpoint(pth, [])
        model, tokenizer, args, _ = load_from_checkpoint(pth)
        write_layout(model, args, tokenizer, Path(folder) / "layout")
        del model
        figures = {"read pth": pth, "read safetensors": Path(folder) / "layout" / "model.safetensors",
                   "model from the .pth": pth, "model from the folder": Path(folder) / "layout"}
        runs = {name: [] for name in figures}
        for _ in range(opts.rounds):
            for name, path in figures.items():
                kind = name if name.startswith("read") else "model"
                runs[name].append(figure(kind, path))
        print(f"{pth.stat().st_size / 1e6:.0f} MB .pth, "
              f"{(Path(folder) / 'layout' / 'model.safetensors').stat().st_size / 1e6:.0f} MB model.safetensors; "
              f"{opts.rounds} rounds")
        print("| figure | seconds, median (min-max) | peak memory |\n|---|---|---|")
        for name, values in runs.items():
            seconds = [v["seconds"] for v in values]
            print(f"| {name} | {statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) | "
                  f"{statistics.median(v['peak_mb'] for v in values):.0f} MB |")


if __name__ == "__main__":
    main()
