"""Training curves from a run's log.txt (one JSON line per epoch) to a PNG, with the --eval_every validation
curve (val_curve.txt beside the log) against training time when there is one; then how the training ended
(step-bound or stopped by the time cap), when the log says.

    python tools/plot_log.py outputs/demo/log.txt [--out curves.png]
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [("loss terms", lambda k: k.startswith("train_loss")),
          ("learning rate", lambda k: k == "train_lr"),
          ("validation", lambda k: k in ("validation_accu", "validation_miou", "validation_accu@0.75"))]


def read_log(path, allow_empty=False):
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {n}: not a JSON line ({err})") from err
    if not rows and not allow_empty:
        raise ValueError(f"{path} holds no epoch lines yet")
    return rows


def plot_log(path, out):
    rows = read_log(path)
    epochs = [row.get("epoch", i) for i, row in enumerate(rows)]
    curve_path = Path(path).with_name("val_curve.txt")
    curve = read_log(curve_path, allow_empty=True) if curve_path.is_file() else []
    panels = len(PANELS) + bool(curve)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    if curve:
        ax = axes[-1]
        minutes = [row["train_seconds"] / 60 for row in curve]
        for key in ("accu", "miou"):
            ax.plot(minutes, [row[key] for row in curve], marker="." if len(curve) < 60 else None, label=key)
        # Acc@0.5 per expression type (the demo labels them): which word class is learned when.
        by_type = [row.get("by_type", {}) for row in curve]
        for name in sorted({name for types in by_type for name in types}):
            points = [(m, types[name]["accu"]) for m, types in zip(minutes, by_type) if name in types]
            ax.plot(*zip(*points), linewidth=0.9, linestyle="--", label=f"accu {name}")
        ax.set_title(f"validation subset ({curve[0]['count']} samples)")
        ax.set_xlabel("training minutes")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax, (title, wanted) in zip(axes, PANELS):
        keys = sorted({k for row in rows for k, v in row.items() if wanted(k) and isinstance(v, (int, float))})
        for key in keys:
            points = [(e, row[key]) for e, row in zip(epochs, rows) if key in row]
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=key.removeprefix("train_"))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if title == "learning rate":
            ax.set_yscale("log")
        if keys:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def get_args_parser():
    parser = argparse.ArgumentParser(prog="tools/plot_log.py", description=__doc__.splitlines()[0])
    parser.add_argument("log", help="log.txt written by train.py")
    parser.add_argument("--out", default="", help="PNG to write (default: curves.png beside the log)")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if not Path(opts.log).is_file():
        raise SystemExit(f"log file not found: {opts.log} (train.py writes <output_dir>/log.txt)")
    out = opts.out or str(Path(opts.log).with_name("curves.png"))
    print(f"wrote {plot_log(opts.log, out)}")
    end = read_log(opts.log)[-1].get("end")
    if end:  # the demo's last lines say how its training ended
        print(f"training: {end}")


if __name__ == "__main__":
    sys.exit(main())
