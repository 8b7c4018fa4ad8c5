"""The CNN once per image: an image's phrases in one predictor call and eval.py's batches by image, against one
expression at a time, and against a baseline revision of the project (docs/performance.md, "Many phrases per image").

    python -m benchmarks.bench_grouped --baseline main       # full size (ResNet-101, BERT-base, 640 px), 2 threads
    python -m benchmarks.bench_grouped --small                # a small model: a smoke run, no baseline

Every figure is measured in a fresh process (2 threads), the trees alternating round by round; the tables give medians
(min-max). The baseline is the given git revision's files, unpacked into --work_dir (git archive), running the same
calls: SegVGPredictor.predict with the image repeated, and eval.py's main. Figures:
  predict: one image, --phrases phrases: a call with one phrase; the phrases one call each; all in one call.
  eval: eval.py on a RefCOCO-like JSONL split (--images COCO-sized JPEGs, 7.5 expressions per image), the evaluation
        loop's time (the checkpoint's loading excluded), as expressions per second.
  agreement (this tree): the results of one call per phrase against all phrases in one call, full size and the
        demo's size: the largest box difference (pixels) and probability-map difference.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.checkpoints import ROOT, write_checkpoint

SMALL = ["--backbone", "resnet18", "--imsize", "256", "--bert_layers", "4", "--enc_layers", "2",
         "--vl_enc_layers", "2", "--vl_dec_layers", "2", "--max_query_len", "20"]
DEMO_MODEL_LINES = slice(2, 7)  # tools/demo_flags.txt's lines of model flags (the first names the dataset)
PHRASES = ["the man on the left in a red shirt", "woman in white", "the dog lying on the sofa", "car far right",
           "the smaller of the two bowls", "guy with glasses", "the plate nearest to us", "bottom left corner chair",
           "the blue umbrella", "lady holding a cup"]

# Runs in the tree under test (cwd): only the interface both revisions share.
WORKER = r'''
import json, sys, time
import torch
torch.set_num_threads(2)
task = json.loads(sys.argv[1])
if task["kind"] == "predict":
    from inference import SegVGPredictor
    predictor = SegVGPredictor.from_checkpoint(task["checkpoint"], device="cpu")
    image, phrases = task["image"], task["phrases"]
    predictor(image, phrases[0])
    predictor.predict([image] * len(phrases), phrases)
    def timed(call):
        start = time.perf_counter(); out = call(); return time.perf_counter() - start, out
    single = [timed(lambda: predictor(image, phrases[0]))[0] for _ in range(task["repeats"])]
    separate, grouped, worst_box, worst_map = [], [], 0.0, 0.0
    for _ in range(task["repeats"]):
        seconds, one_by_one = timed(lambda: [predictor(image, p) for p in phrases])
        separate.append(seconds)
        seconds, together = timed(lambda: predictor.predict([image] * len(phrases), phrases))
        grouped.append(seconds)
        for a, b in zip(one_by_one, together):
            worst_box = max(worst_box, max(abs(x - y) for x, y in zip(a["box"], b["box"])))
            worst_map = max(worst_map, float(abs(a["mask"] - b["mask"]).max()))
    print(json.dumps({"single": single, "separate": separate, "grouped": grouped, "box": worst_box, "map": worst_map}))
else:
    import eval as eval_script
    timings = []
    evaluate = eval_script.evaluate
    def timed_evaluate(*args, **kwargs):
        start = time.perf_counter(); out = evaluate(*args, **kwargs); timings.append(time.perf_counter() - start)
        return out
    eval_script.evaluate = timed_evaluate
    stats = eval_script.main(eval_script.get_args_parser().parse_args(task["argv"]))
    print(json.dumps({"seconds": timings[0], "count": stats["count"], "accu": stats["accu"]}))
'''


def demo_model_flags():
    """The demo's model (tools/demo_flags.txt) with BERT's vocabulary, which needs no generated dataset."""
    lines = (ROOT / "tools" / "demo_flags.txt").read_text().splitlines()[DEMO_MODEL_LINES]
    flags = " ".join(lines).split()
    return flags[2:] if flags[:2] == ["--dataset", "demo"] else flags


def make_refcoco_like(root, images, seed=0):
    """A JSONL test split: COCO-sized JPEGs (smooth random content), 7 or 8 expressions each (7.5 on average)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(images):
        w, h = (640, 480) if k % 3 else (480, 640)
        small = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / "images" / f"{k:06d}.jpg", quality=90)
        for e in range(7 + k % 2):
            x1, y1 = rng.integers(0, w // 2), rng.integers(0, h // 2)
            box = [int(x1), int(y1), int(x1 + rng.integers(20, w // 2)), int(y1 + rng.integers(20, h // 2))]
            lines.append(json.dumps({"image": f"{k:06d}.jpg", "phrase": PHRASES[(k + e) % len(PHRASES)], "box": box}))
    split = root / "split" / "bench"
    split.mkdir(parents=True, exist_ok=True)
    (split / "bench_test.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def unpack(revision, folder):
    """The files of a git revision in folder (replaced)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run(tree, task):
    env = {"OMP_NUM_THREADS": "2", "PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(task)], cwd=tree, capture_output=True, text=True,
                          env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{task['kind']} in {tree} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return json.loads(lines[-1])


def cell(values):
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_grouped", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--baseline", default="", help="git revision to compare with (e.g. main); none: this tree only")
    parser.add_argument("--phrases", type=int, default=8, help="phrases on the one image of the predict figure")
    parser.add_argument("--images", type=int, default=8, help="images of the eval figure's split (7.5 expressions each)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per predict process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per (figure, tree), the trees alternating")
    parser.add_argument("--batch_size", type=int, default=8, help="eval.py --batch_size")
    parser.add_argument("--small", action="store_true", help="a small model (smoke run), not the paper's")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/bench_grouped"),
                        help="folder for the checkpoints, the split and the baseline's files")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    work = opts.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "model.pth"
    write_checkpoint(checkpoint, SMALL if opts.small else [])
    demo_checkpoints = {head: work / f"demo_{head}.pth" for head in ("grid", "fine")}
    for head, path in demo_checkpoints.items():
        write_checkpoint(path, demo_model_flags() + ["--mask_head", head])
    count = make_refcoco_like(work / "data", opts.images)
    image = str(work / "data" / "images" / "000001.jpg")
    phrases = [PHRASES[k % len(PHRASES)] for k in range(opts.phrases)]
    trees = {"this tree": ROOT}
    if opts.baseline:
        trees[f"baseline {opts.baseline}"] = unpack(opts.baseline, work / "baseline")
    predict_task = {"kind": "predict", "checkpoint": str(checkpoint), "image": image, "phrases": phrases,
                    "repeats": opts.repeats}
    eval_argv = ["--checkpoint", str(checkpoint), "--dataset", "bench", "--data_root", str(work / "data" / "images"),
                 "--split_root", str(work / "data" / "split"), "--eval_set", "test", "--batch_size",
                 str(opts.batch_size), "--num_workers", "1", "--device", "cpu", "--output_dir", str(work / "eval")]
    figures = {name: {"single": [], "separate": [], "grouped": [], "eval": [], "accu": set()} for name in trees}
    agreement = {}
    for round_ in range(opts.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            out = run(trees[name], predict_task)
            for key in ("single", "separate", "grouped"):
                figures[name][key] += out[key]
            if name == "this tree":
                agreement["full size" if not opts.small else "small"] = (out["box"], out["map"])
        for name in order:
            out = run(trees[name], {"kind": "eval", "argv": eval_argv})
            figures[name]["eval"].append(out["count"] / out["seconds"])
            figures[name]["accu"].add(round(out["accu"], 4))
    for head, path in demo_checkpoints.items():
        demo = run(ROOT, {**predict_task, "checkpoint": str(path), "repeats": 1})
        agreement[f"demo size, {head} head"] = (demo["box"], demo["map"])

    size = "small model" if opts.small else "full size (ResNet-101, BERT-base, 640 px, fp32)"
    print(f"\n{size}, 2 threads, medians (min-max) of {opts.rounds} processes x {opts.repeats} repeats, seconds")
    print(f"| tree | one call, 1 phrase | {opts.phrases} calls, 1 phrase each | one call, {opts.phrases} phrases | "
          f"ratio one call / {opts.phrases} calls |")
    print("|---|---|---|---|---|")
    for name, f in figures.items():
        ratio = statistics.median(f["grouped"]) / statistics.median(f["separate"])
        print(f"| {name} | {cell(f['single'])} | {cell(f['separate'])} | {cell(f['grouped'])} | {ratio:.2f} |")
    print(f"\neval.py on {count} expressions over {opts.images} images (batch {opts.batch_size}), expressions/s")
    print("| tree | expressions/s | Acc@0.5 |")
    print("|---|---|---|")
    for name, f in figures.items():
        print(f"| {name} | {statistics.median(f['eval']):.2f} ({min(f['eval']):.2f}-{max(f['eval']):.2f}) | "
              f"{', '.join(str(a) for a in sorted(f['accu']))} |")
    if opts.baseline:
        base = figures[f"baseline {opts.baseline}"]
        ours = figures["this tree"]
        print(f"\nagainst {opts.baseline}: single call {statistics.median(ours['single']) / statistics.median(base['single']):.2f}x "
              f"the time, eval throughput {statistics.median(ours['eval']) / statistics.median(base['eval']):.2f}x")
    print("\nOne call per phrase vs all phrases in one call (this tree): largest difference")
    for name, (box, prob) in agreement.items():
        print(f"  {name}: box {box:.4f} px, probability map {prob:.2e}")


if __name__ == "__main__":
    main()
