"""End to end on a tiny demo split: train.py's main fits it, and eval.py's main, given nothing but the saved
checkpoint, scores it above the untrained model."""
import json
import shutil

import torch
from torch.utils.data import DataLoader

import train
from datasets import build_dataset, build_tokenizer, collate_fn, demo
from engine import evaluate, summarize_results
from eval import get_args_parser as get_eval_args_parser
from eval import main as eval_main
from models import build_model
from train_helpers import TINY_TRAIN

SAMPLES = 32
TRAIN_FLAGS = ["--backbone_stride", "16", "--backbone_norm", "batch", "--train_stem", "--freeze_epochs", "0",
               "--clip_max_norm", "0", "--lr", "2e-3", "--lr_bert", "2e-3", "--lr_visu_cnn", "2e-3",
               "--lr_visu_tra", "2e-3", "--lr_scheduler", "cosine_iter", "--warmup_steps", "20", "--batch_size", "8",
               "--epochs", "60", "--channels_last"]


def test_short_training_beats_untrained_model(tmp_path):
    data = tmp_path / "demo"
    demo.main(["--out", str(data), "--seed", "2", "--train", str(SAMPLES), "--val", "1", "--test", "1"])
    # Evaluate on the training expressions (with the evaluation transform): the run must at least fit them.
    for split in ("val", "test"):
        shutil.copy(data / "split" / "demo" / "demo_train.pth", data / "split" / "demo" / f"demo_{split}.pth")
    data_flags = ["--dataset", "demo", "--data_root", str(data), "--split_root", str(data / "split")]
    args = train.get_args_parser().parse_args(TINY_TRAIN + data_flags + TRAIN_FLAGS +
                                              ["--output_dir", str(tmp_path / "out")])
    train.main(args)

    eval_args = ["--eval_model", str(tmp_path / "out" / "best_checkpoint.pth"), "--eval_set", "test",
                 "--output_dir", str(tmp_path / "eval"), "--device", "cpu", "--num_workers", "0"]
    trained = eval_main(get_eval_args_parser().parse_args(eval_args), explicit={"device", "num_workers"})
    report = json.loads((tmp_path / "eval" / "eval_demo_test.json").read_text())
    assert report["accu"] == trained["accu"] and report["count"] == SAMPLES
    assert set(report["by_type"]) <= {"colour", "shape", "both", "position"}

    torch.manual_seed(0)
    dataset = build_dataset("test", args, build_tokenizer(args))
    untrained = summarize_results(
        evaluate(build_model(args), DataLoader(dataset, batch_size=8, collate_fn=collate_fn), "cpu", args), dataset)
    assert trained["accu"] > untrained["accu"]
    assert trained["miou"] > untrained["miou"] + 0.03
