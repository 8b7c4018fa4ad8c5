"""Memory and time of a large training split: the index file (datasets/index) against the code of another checkout.

    python -m benchmarks.bench_index [--expressions 6000000] [--processes 2] [--workers 2] [--samples 200000]
    python -m benchmarks.bench_index --expressions 1000000 --compare ../segvg-main     # both, interleaved
    python -m benchmarks.bench_index --throughput [--expressions 120000] [--compare ../segvg-main]
    python -m benchmarks.bench_index --vg [--vg_images 108077]

Default: writes an N-expression JSONL training split (phrases of 3-9 words over 200 images, as a pre-training corpus
looks to the loader), then in fresh processes: the cold open (the index built), the warm open (the index there), the
index's bytes on disk per expression, and the memory of P processes started side by side on it (the ranks of a node),
each with a DataLoader of W workers reading R random samples' records (what __getitem__ reads of the split, no image
decode): PSS and private memory of every process after the last sample (shared libraries left out), each worker's
private memory at its first and last batch, and the same on a 1,000-expression split, so that the split's own share
is the difference.

--throughput: a RefCOCO-layout split of N expressions over 200 JPEGs; samples per second of the training loader (640
px, every augmentation, W workers), in alternating rounds when comparing.
--vg: a region_descriptions.json and image_data.json of the release's size and layout, then the peak memory (max
RSS) and time of `python -m datasets.build_index vg` on them.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a man woman person red blue green white black left right top bottom shirt hat dog cat car tree table "
         "chair on in with near small big standing sitting wooden glass window door sky grass street sign").split()
IMAGES = 200

# One rank: open the split, read R random samples' records through a DataLoader, report memory, wait to be told to go.
RANK = r"""
import json, os, random, sys, time
import torch
from torch.utils.data import DataLoader, Dataset
from utils.options import build_training_parser

def memory(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return {"pss": fields["Pss"], "private": fields["Private_Clean"] + fields["Private_Dirty"]}

class Records(Dataset):
    def __init__(self, dataset):
        self.dataset, self.read = dataset, 0
    def __len__(self):
        return len(self.dataset)
    def __getitem__(self, idx):
        file_name, box, phrase, extra = self.dataset._parse(idx)
        self.read += 1
        probe = memory(os.getpid())["private"] if self.read == 1 or self.read % 2000 == 0 else None
        return os.getpid(), len(phrase), probe

task = json.loads(sys.argv[1])
from datasets import build_dataset, build_tokenizer
args = build_training_parser().parse_args(["--dataset", task["dataset"], "--data_root", task["root"], "--split_root",
                                            task["split_root"], "--bert_model", "bert-base-uncased"])
start = time.perf_counter()
dataset = build_dataset("train", args, build_tokenizer(args))
opened = time.perf_counter() - start
if task["samples"]:
    rng = random.Random(task["seed"])
    order = [rng.randrange(len(dataset)) for _ in range(task["samples"] + 64 * task["workers"])]
    loader = DataLoader(Records(dataset), batch_size=64, sampler=order, num_workers=task["workers"],
                        collate_fn=lambda batch: batch)
    batches = iter(loader)
    first, last = {}, {}
    for _ in range(task["samples"] // 64):
        for pid, _, probe in next(batches):
            if probe is not None:
                first.setdefault(pid, probe)
                last[pid] = probe
    workers = [w.pid for w in batches._workers] if task["workers"] else []
    print(json.dumps({"opened": opened, "pid": os.getpid(), "workers": workers, "first": first, "last": last}),
          flush=True)
    sys.stdin.readline()  # the orchestrator reads every process's memory while all are alive
else:
    print(json.dumps({"opened": opened, "pid": os.getpid(), "workers": []}), flush=True)
"""


def smaps(pid):
    """PSS and private memory (MB) of a process, without its shared libraries: their PSS depends on how many other
    processes of the machine map them, not on the split."""
    pss = private = 0
    library = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts[0].endswith(":"):  # a mapping's first line: address range, ..., path
                library = len(parts) > 5 and ".so" in parts[5]
            elif not library and parts[0] == "Pss:":
                pss += int(parts[1])
            elif not library and parts[0] in ("Private_Clean:", "Private_Dirty:"):
                private += int(parts[1])
    return {"pss": pss / 1024, "private": private / 1024}


def write_split(folder, name, count, seed=0):
    """<folder>/split/<name>/<name>_train.jsonl (and a 2-line val), count records over IMAGES images."""
    rng = random.Random(seed)
    split = folder / "split" / name
    split.mkdir(parents=True, exist_ok=True)
    with (split / f"{name}_train.jsonl").open("w") as f:
        lines = []
        for n in range(count):
            x, y = rng.randrange(300), rng.randrange(300)
            box = [x, y, x + 1 + rng.randrange(200), y + 1 + rng.randrange(200)]
            phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
            lines.append(json.dumps({"image": f"images/{n % IMAGES}.jpg", "phrase": phrase, "box": box}))
            if len(lines) == 100000:
                f.write("\n".join(lines) + "\n")
                lines = []
        f.write("\n".join(lines) + ("\n" if lines else ""))
    (split / f"{name}_val.jsonl").write_text(
        json.dumps({"image": "images/val.jpg", "phrase": "a thing", "box": [1, 1, 9, 9]}) + "\n")


def run_ranks(tree, folder, name, opts, samples):
    """P rank processes on one split, side by side: each one's open time, memory of all processes, worker growth."""
    task = {"dataset": name, "root": str(folder), "split_root": str(folder / "split"), "samples": samples,
            "workers": opts.workers, "seed": 0}
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", RANK, json.dumps(dict(task, seed=k))], cwd=tree, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(opts.processes if samples else 1)]
    reports = []
    for proc in procs:
        line = " "
        while line and not line.startswith("{"):  # past what the code prints on the way (the index's build)
            line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a rank failed in {tree}: {proc.stderr.read()[-3000:]}")
        reports.append(json.loads(line))
    memory = {"pss": 0.0, "private": 0.0, "growth": []}
    for report in reports:
        for pid in [report["pid"], *report["workers"]]:
            figures = smaps(pid)
            memory["pss"] += figures["pss"]
            memory["private"] += figures["private"]
        memory["growth"] += [(report["last"][p] - report["first"][p]) / 1024 for p in report.get("first", {})]
    for proc in procs:
        proc.communicate("\n")
    return [r["opened"] for r in reports], memory


def index_bytes(folder, name):
    return sum(p.stat().st_size for p in (folder / "split" / name).glob("*train*.index"))


def measure_index(trees, opts):
    """Rows of the table, one per tree: cold, warm, bytes/expression, memory over the 1,000-expression baseline."""
    work = Path(tempfile.mkdtemp(prefix="bench_index_"))
    try:
        start = time.perf_counter()
        write_split(work, "big", opts.expressions)
        write_split(work, "small", 1000)
        print(f"wrote {opts.expressions} expressions in {time.perf_counter() - start:.0f} s "
              f"({(work / 'split' / 'big' / 'big_train.jsonl').stat().st_size / 1e6:.0f} MB)", flush=True)
        rows = {}
        for label, tree in trees.items():
            for index in (work / "split").glob("*/*.index*"):
                index.unlink()
            cold, _ = run_ranks(tree, work, "big", opts, 0)
            warm = [run_ranks(tree, work, "big", opts, 0)[0][0] for _ in range(opts.repeats)]
            _, base = run_ranks(tree, work, "small", opts, opts.samples)
            _, big = run_ranks(tree, work, "big", opts, opts.samples)
            size = index_bytes(work, "big")
            rows[label] = {"cold": cold[0], "warm": statistics.median(warm),
                           "bytes": size / opts.expressions if size else None,
                           "pss": big["pss"] - base["pss"], "private": big["private"] - base["private"],
                           "growth": max(big["growth"], default=0.0), "total_pss": big["pss"]}
            print(label, json.dumps(rows[label]), flush=True)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


THROUGHPUT = r"""
import json, sys, time
import torch
from datasets import build_loaders, build_tokenizer
from utils.options import build_training_parser
task = json.loads(sys.argv[1])
args = build_training_parser().parse_args(["--dataset", "unc", "--data_root", task["root"], "--split_root",
                                            task["split_root"], "--bert_model", "bert-base-uncased", "--device",
                                            "cpu", "--num_workers", str(task["workers"]), "--batch_size", "16",
                                            "--aug_crop", "--aug_scale", "--aug_translate", "--aug_blur"])
loader, _ = build_loaders(args, build_tokenizer(args))
batches = iter(loader)
next(batches)
start = time.perf_counter()
for _ in range(task["batches"]):
    next(batches)
print(json.dumps({"samples_per_s": task["batches"] * 16 / (time.perf_counter() - start)}))
"""


def write_refcoco(folder, count):
    """IMAGES photo-sized JPEGs and a RefCOCO-layout unc_train.pth (and unc_val.pth) of count expressions."""
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    images = folder / "images" / "other/images/mscoco/images/train2014"
    images.mkdir(parents=True)
    for n in range(IMAGES):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        coarse.resize((640, 480), Image.BICUBIC).save(images / f"COCO_train2014_{n:012d}.jpg", quality=90)
    rows = [(f"COCO_train2014_{n % IMAGES:012d}.jpg", n, [float(rng.uniform(0, 400)), float(rng.uniform(0, 300)),
             float(rng.uniform(20, 240)), float(rng.uniform(20, 180))],
             " ".join(WORDS[k] for k in rng.integers(0, len(WORDS), rng.integers(3, 10))), []) for n in range(count)]
    (folder / "split" / "unc").mkdir(parents=True)
    for split in ("train", "val"):
        torch.save(rows, folder / "split" / "unc" / f"unc_{split}.pth")


def measure_throughput(trees, opts):
    work = Path(tempfile.mkdtemp(prefix="bench_index_"))
    try:
        write_refcoco(work, opts.expressions)
        rates = {label: [] for label in trees}
        for _ in range(opts.repeats):
            for label, tree in trees.items():
                task = {"root": str(work / "images"), "split_root": str(work / "split"), "workers": opts.workers,
                        "batches": 60}
                env = dict(os.environ, PYTHONPATH=str(tree))
                proc = subprocess.run([sys.executable, "-c", THROUGHPUT, json.dumps(task)], cwd=tree, env=env,
                                      capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(proc.stderr[-3000:])
                rates[label].append(json.loads(proc.stdout.strip().splitlines()[-1])["samples_per_s"])
                print(label, f"{rates[label][-1]:.1f} samples/s", flush=True)
        return {label: statistics.median(values) for label, values in rates.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_vg(folder, images, regions_per_image=50, seed=0):
    """The release's layout and size (~108k images x ~50 regions: ~700 MB), a few repeats and bad regions."""
    rng = random.Random(seed)
    with (folder / "image_data.json").open("w") as f:
        f.write("[" + ", ".join(json.dumps({"width": 800, "height": 600, "image_id": k, "coco_id": k if k % 20 == 0
                                            else None, "flickr_id": None,
                                            "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{k}.jpg"})
                                for k in range(1, images + 1)) + "]")
    region = 0
    with (folder / "region_descriptions.json").open("w") as f:
        f.write("[")
        for k in range(1, images + 1):
            regions = []
            for _ in range(regions_per_image):
                region += 1
                x, y = rng.randrange(700), rng.randrange(500)
                regions.append({"region_id": region, "width": rng.randrange(1, 100), "height": rng.randrange(1, 100),
                                "image_id": k, "phrase": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))),
                                "y": y, "x": x})
            f.write(("" if k == 1 else ", ") + json.dumps({"regions": regions, "id": k}))
        f.write("]")
    return region


def measure_vg(opts):
    work = Path(tempfile.mkdtemp(prefix="bench_vg_"))
    try:
        regions = write_vg(work, opts.vg_images)
        size = (work / "region_descriptions.json").stat().st_size
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "datasets.build_index", "vg", "--vg_dir",
                               str(work), "--split_root", str(work / "split")], cwd=ROOT, capture_output=True,
                              text=True)
        seconds = time.perf_counter() - start
        peak = next(int(line.split()[-1]) for line in proc.stderr.splitlines() if "Maximum resident" in line)
        print(proc.stdout[-1500:])
        print(f"vg converter: {regions} regions ({size / 1e6:.0f} MB), {seconds:.0f} s, peak memory (max RSS) "
              f"{peak / 1024:.0f} MB, exit {proc.returncode}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expressions", default=6_000_000, type=int, help="expressions in the generated split")
    parser.add_argument("--processes", default=2, type=int, help="processes started side by side (ranks of a node)")
    parser.add_argument("--workers", default=2, type=int, help="DataLoader workers per process")
    parser.add_argument("--samples", default=200_000, type=int, help="random samples each process reads")
    parser.add_argument("--repeats", default=3, type=int, help="warm opens (or throughput rounds) per variant")
    parser.add_argument("--compare", default="", help="another checkout of this project (today's main) to measure too")
    parser.add_argument("--throughput", action="store_true", help="loader samples/s on a RefCOCO-layout split")
    parser.add_argument("--vg", action="store_true", help="the VG converter's peak memory on a release-size file")
    parser.add_argument("--vg_images", default=108_077, type=int, help="--vg: images in the generated release")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.vg:
        return measure_vg(opts)
    trees = {"index": ROOT}
    if opts.compare:
        if not (Path(opts.compare) / "datasets").is_dir():
            sys.exit(f"--compare {opts.compare}: not a checkout of this project")
        trees["compare"] = Path(opts.compare).resolve()
    if opts.throughput:
        for label, rate in measure_throughput(trees, opts).items():
            print(f"{label}: {rate:.1f} samples/s (median of {opts.repeats})")
        return
    rows = measure_index(trees, opts)
    print(f"\n{opts.expressions} expressions, {opts.processes} processes x {opts.workers} workers, {opts.samples} "
          f"samples each; memory over a 1,000-expression split")
    print("| code | cold open | warm open | on disk / expression | PSS, all processes | private, all | worker growth |")
    print("|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        size = f"{row['bytes']:.0f} B" if row["bytes"] else "-"
        print(f"| {label} | {row['cold']:.1f} s | {row['warm']:.1f} s | {size} | {row['pss']:.0f} MB | "
              f"{row['private']:.0f} MB | {row['growth']:.0f} MB |")


if __name__ == "__main__":
    main()
