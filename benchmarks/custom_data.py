"""The own-data route end to end on generated data that is not the demo's (datasets/objects.py).

    python -m benchmarks.custom_data [--seeds 0 1 2] [--max_steps 800] [--output_dir outputs/custom_data]

1. Writes dataset A (noise backgrounds) as CSV files and dataset B (striped backgrounds, another seed) as ODVG files,
   converts both with datasets.build_index and validates them with their images.
2. Trains the demo's model configuration (tools/demo_flags.txt, the shipped bert-base-uncased vocabulary) on A for
   --max_steps steps per seed and evaluates each run's best checkpoint on A's test split.
3. Fine-tunes the first seed's checkpoint on B with --pretrained, and reports where it starts (the checkpoint and an
   untrained model evaluated on B's test split, the first point of the fine-tuning run's validation curve) and ends.

Runs already in --output_dir are reused. Prints a markdown table and writes results.json.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command, log=None):
    print(" ".join(map(str, command)), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") if log else open(os.devnull, "w") as out:
        subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, check=True, env=env,
                       stdout=out if log else None)


def evaluate(checkpoint, data, dataset, output_dir):
    """Test Acc@0.5 (and per type) of a checkpoint on dataset's test split."""
    report = Path(output_dir) / f"eval_{dataset}_test.json"
    if not report.is_file():
        run(["eval.py", "--checkpoint", checkpoint, "--eval_set", "test", "--dataset", dataset, "--data_root", data,
             "--split_root", Path(data) / "split", "--output_dir", output_dir, "--num_workers", "0"])
    return json.loads(report.read_text())


def prepare(data):
    if (Path(data) / "split" / "objects_b" / "objects_b_test.jsonl").is_file():
        return
    run(["-m", "datasets.objects", "--output_dir", data, "--name", "objects_a", "--format", "csv", "--seed", "0"])
    run(["-m", "datasets.objects", "--output_dir", data, "--name", "objects_b", "--format", "odvg", "--seed", "1",
         "--background", "stripes"])
    for split in ("train", "val", "test"):
        run(["-m", "datasets.build_index", "csv", "--csv", Path(data) / f"objects_a_{split}.csv", "--dataset",
             "objects_a", "--split", split, "--split_root", Path(data) / "split", "--data_root", data])
        run(["-m", "datasets.build_index", "odvg", "--odvg", Path(data) / f"objects_b_{split}.odvg.jsonl",
             "--dataset", "objects_b", "--split", split, "--split_root", Path(data) / "split", "--data_root", data])


def train(data, dataset, output_dir, *extra):
    if not (Path(output_dir) / "best_checkpoint.pth").is_file():
        run(["train.py", "@tools/demo_flags.txt", "--dataset", dataset, "--data_root", data, "--split_root",
             Path(data) / "split", "--output_dir", output_dir, *extra], log=Path(f"{output_dir}.log"))


def last_step(output_dir):
    lines = (Path(output_dir) / "log.txt").read_text().splitlines()
    return json.loads(lines[-1])["step"]


def curve(output_dir):
    lines = (Path(output_dir) / "val_curve.txt").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.custom_data", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds on dataset A")
    parser.add_argument("--max_steps", type=int, default=800, help="steps of each run on dataset A")
    parser.add_argument("--finetune_steps", type=int, default=200, help="steps of the fine-tuning run on dataset B")
    parser.add_argument("--output_dir", default="outputs/custom_data", help="folder of the data, runs and results")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    out = Path(opts.output_dir).resolve()
    data = out / "data"
    prepare(data)
    results = {"a": {}}
    for seed in opts.seeds:
        folder = out / f"a_seed{seed}"
        train(data, "objects_a", folder, "--seed", seed, "--max_steps", opts.max_steps, "--eval_every", 100)
        report = evaluate(folder / "best_checkpoint.pth", data, "objects_a", folder)
        results["a"][seed] = {"accu": report["accu"], "miou": report["miou"],
                              "by_type": {k: v["accu"] for k, v in report["by_type"].items()},
                              "steps": last_step(folder)}
    source = out / f"a_seed{opts.seeds[0]}" / "best_checkpoint.pth"
    finetuned = out / "b_finetuned"
    train(data, "objects_b", finetuned, "--pretrained", source, "--max_steps", opts.finetune_steps, "--eval_every",
          20, "--seed", opts.seeds[0])
    scratch = out / "b_untrained"
    train(data, "objects_b", scratch, "--max_steps", 1, "--eval_every", 1, "--lr", 0, "--lr_bert", 0,
          "--lr_visu_cnn", 0, "--lr_visu_tra", 0, "--seed", opts.seeds[0])
    results["b"] = {"checkpoint_on_b": evaluate(source, data, "objects_b", out / "a_on_b")["accu"],
                    "untrained_on_b": evaluate(scratch / "best_checkpoint.pth", data, "objects_b", scratch)["accu"],
                    "first_curve_point": curve(finetuned)[0], "finetuned": evaluate(
                        finetuned / "best_checkpoint.pth", data, "objects_b", finetuned)["accu"]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("| seed | test Acc@0.5 | mIoU | " + " | ".join(sorted(results["a"][opts.seeds[0]]["by_type"])) + " |")
    for seed, r in results["a"].items():
        print(f"| {seed} | {r['accu']:.3f} | {r['miou']:.3f} | "
              + " | ".join(f"{r['by_type'][k]:.3f}" for k in sorted(r["by_type"])) + " |")
    b = results["b"]
    print(f"B test Acc@0.5: untrained {b['untrained_on_b']:.3f}, A's checkpoint {b['checkpoint_on_b']:.3f}, "
          f"fine-tuning's first curve point (step {b['first_curve_point']['step']}, "
          f"{b['first_curve_point']['count']} val samples) {b['first_curve_point']['accu']:.3f}, "
          f"after {opts.finetune_steps} steps {b['finetuned']:.3f}")


if __name__ == "__main__":
    main()
