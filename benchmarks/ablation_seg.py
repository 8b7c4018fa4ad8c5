"""The paper's ablation in miniature: the demo configuration trained with and without segmentation supervision.

    python -m benchmarks.ablation_seg [--seeds 0 1 2] [--minutes 9] [--max_steps N] [--output_dir outputs/ablation]

For each seed, trains the demo configuration (tools/demo_flags.txt) with --seg_loss on and --seg_loss off for the
same budget (the demo's --max_steps, or --minutes of training if that runs out first, as `bash train.sh` does),
validating every --eval_every steps, evaluates each best checkpoint on the demo test split, then
writes results.json, results.md (mean and standard deviation over seeds of Acc@0.5, Acc@0.75, mIoU and Acc@0.5 per
expression type, per variant, and the difference) and ablation.png (validation Acc@0.5 against training time:
each seed a thin line, the mean bold). Resumable: a run whose test evaluation exists is not repeated, and an
interrupted run continues from its last checkpoint.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"seg": "on", "no_seg": "off"}
LABELS = {"seg": "SegVG (box -> mask supervision)", "no_seg": "without segmentation supervision"}
COLOURS = {"seg": "tab:red", "no_seg": "tab:blue"}


def run_one(variant, seed, opts):
    """Train and evaluate one (variant, seed) unless its test evaluation exists; returns its folder."""
    folder = Path(opts.output_dir) / f"{variant}_seed{seed}"
    report = folder / "eval_demo_test.json"
    if report.is_file():
        print(f"{folder}: done already")
        return folder
    data = ["--data_root", opts.data_root, "--split_root", str(Path(opts.data_root) / "split")]
    curve = ["--eval_every", str(opts.eval_every)] if opts.eval_every else []
    steps = ["--max_steps", str(opts.max_steps)] if opts.max_steps else []
    train = ["train.py", "@tools/demo_flags.txt", *data, "--output_dir", str(folder), "--seed", str(seed),
             "--minutes", str(opts.minutes), *steps, "--seg_loss", VARIANTS[variant], *curve, "--auto_resume"]
    evaluate = ["eval.py", "--checkpoint", str(folder / "best_checkpoint.pth"), "--eval_set", "test",
                "--output_dir", str(folder), "--num_workers", "0"]
    for command in (train, evaluate):
        print(" ".join(command), flush=True)
        # Through tools/launch.sh, as train.sh runs it: the same CPU allocator settings and signal forwarding.
        subprocess.run(["bash", "-c", 'source tools/launch.sh && launch "$@"', "launch", *command], cwd=ROOT,
                       check=True, env={**os.environ, "PYTHON": sys.executable})
    return folder


def read_run(folder):
    report = json.loads((folder / "eval_demo_test.json").read_text())
    curve_file = folder / "val_curve.txt"  # absent when the budget ended before the first curve point
    lines = curve_file.read_text().splitlines() if curve_file.is_file() else []
    curve = [json.loads(line) for line in lines if line.strip()]
    log = [json.loads(line) for line in (folder / "log.txt").read_text().splitlines() if line.strip()]
    return {"test": {k: report[k] for k in ("accu", "accu@0.75", "miou", "count", "by_type") if k in report},
            "steps": log[-1]["step"] if log else 0,
            "samples_per_s": statistics.mean(e["train_samples_per_s"] for e in log) if log else 0.0,
            "curve": [(p["train_seconds"] / 60, p["accu"]) for p in curve]}


def metrics(run):
    test = run["test"]
    values = {"Acc@0.5": test["accu"], "Acc@0.75": test["accu@0.75"], "mIoU": test["miou"]}
    values.update({f"Acc@0.5 {name}": s["accu"] for name, s in sorted(test.get("by_type", {}).items())})
    return values


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results, seeds):
    names = list(metrics(results["seg"][0]))
    lines = [f"| metric (test, {len(seeds)} seeds) | {LABELS['seg']} | {LABELS['no_seg']} | difference |",
             "|---|---|---|---|"]
    for name in names:
        cells = []
        for variant in VARIANTS:
            cells.append(mean_std([metrics(run)[name] for run in results[variant]]))
        diffs = [metrics(a)[name] - metrics(b)[name] for a, b in zip(results["seg"], results["no_seg"])]
        diff = mean_std(diffs)
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in cells)
                     + f" | {diff[0]:+.3f} ± {diff[1]:.3f} |")
    steps = {v: statistics.mean(run["steps"] for run in results[v]) for v in VARIANTS}
    lines.append(f"| training steps (mean) | {steps['seg']:.0f} | {steps['no_seg']:.0f} | |")
    return "\n".join(lines)


def plot(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, runs in results.items():
        curves = [np.array(run["curve"]) for run in runs if run["curve"]]
        for curve in curves:
            ax.plot(curve[:, 0], curve[:, 1], color=COLOURS[variant], alpha=0.35, linewidth=0.8)
        if curves:
            grid = np.linspace(0, min(c[-1, 0] for c in curves), 100)
            mean = np.mean([np.interp(grid, c[:, 0], c[:, 1]) for c in curves], axis=0)
            ax.plot(grid, mean, color=COLOURS[variant], linewidth=2.5, label=LABELS[variant])
    ax.set_xlabel("training minutes")
    ax.set_ylabel("validation Acc@0.5 (subset)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation_seg", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the runs (one pair each)")
    parser.add_argument("--minutes", type=float, default=9.0,
                        help="training-time cap of each run (train.sh's DEMO_MINUTES)")
    parser.add_argument("--max_steps", type=int, default=0,
                        help="steps of each run (default: the demo's, tools/demo_flags.txt)")
    parser.add_argument("--eval_every", type=int, default=0,
                        help="validation curve interval in steps (default: the demo's, tools/demo_flags.txt)")
    parser.add_argument("--output_dir", default="outputs/ablation",
                        help="folder of the runs (<variant>_seed<s>) and of the results")
    parser.add_argument("--data_root", default="data/demo", help="the demo dataset (generated when missing)")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if not (Path(opts.data_root) / "split" / "demo" / "demo_test.pth").is_file():
        subprocess.run([sys.executable, "-m", "datasets.demo", "--output_dir", opts.data_root, "--level", "easy",
                        "--seed", "0"], cwd=ROOT, check=True)
    results = {variant: [read_run(run_one(variant, seed, opts)) for seed in opts.seeds] for variant in VARIANTS}
    out = Path(opts.output_dir)
    budget = {"seeds": opts.seeds, "minutes": opts.minutes, "max_steps": opts.max_steps}
    (out / "results.json").write_text(json.dumps({**budget, **results}, indent=1))
    markdown = table(results, opts.seeds)
    (out / "results.md").write_text(markdown + "\n")
    plot(results, out / "ablation.png")
    print(markdown)
    print(f"written: {out / 'results.json'}, {out / 'results.md'}, {out / 'ablation.png'}")


if __name__ == "__main__":
    main()
