"""The presence head learns "not here" at demo scale: a short run on the demo's gref level (half its phrases without a
target) separates them from the others on its val split, and a run on data without such phrases says once that the
head cannot learn there.

Measured with this setup (the demo's flags, the grid head, 150 steps of 32; 2 CPU cores, 2026-12-06), seeds 0-3: val
presence AUROC 0.839 / 0.888 / 0.880 / 0.871 (N-acc 1.000 and T-acc 0.745-0.755 at the default threshold); the bar,
0.65, is chance (0.5) plus a margin that every seed clears by 0.19 or more. The test runs seed 0."""
import json

import pytest

import eval as eval_script
import train
from datasets import demo

STEPS = 150
AUROC_BAR = 0.65


def run_args(data, out, *extra):
    return train.get_args_parser().parse_args([
        "@tools/demo_flags.txt", "--dataset", "demo_gref", "--data_root", str(data), "--split_root",
        str(data / "split"), "--output_dir", str(out), "--device", "cpu", "--seed", "0", "--max_steps", str(STEPS),
        "--batch_size", "32", "--warmup_steps", "20", "--eval_every", "0", "--mask_head", "grid", *map(str, extra)])


@pytest.mark.slow
def test_presence_head_beats_chance_on_val(tmp_path, capsys):
    data = tmp_path / "data"
    demo.main(["--output_dir", str(data), "--level", "gref", "--seed", "0", "--train", "1200", "--val", "200",
               "--test", "1", "--no_target_share", "0.5", "--several_share", "0.2"])
    train.main(run_args(data, tmp_path / "run", "--presence_head"))
    assert "warning: --presence_head" not in capsys.readouterr().out
    stats = eval_script.main(eval_script.get_args_parser().parse_args([
        "--checkpoint", str(tmp_path / "run" / "checkpoint_latest.pth"), "--eval_set", "val", "--device", "cpu",
        "--num_workers", "0", "--output_dir", str(tmp_path / "eval")]))
    print(json.dumps({k: stats[k] for k in ("presence_auroc", "n_acc", "t_acc", "giou")}))
    assert stats["presence_auroc"] > AUROC_BAR


def test_presence_head_without_no_target_phrases_warns_once(tmp_path, capsys):
    data = tmp_path / "data"
    demo.main(["--output_dir", str(data), "--level", "gref", "--seed", "0", "--train", "40", "--val", "8",
               "--test", "1", "--no_target_share", "0", "--several_share", "0.3"])
    train.main(run_args(data, tmp_path / "run", "--presence_head", "--max_steps", "2", "--batch_size", "4"))
    assert capsys.readouterr().out.count("warning: --presence_head, but no training phrase") == 1
