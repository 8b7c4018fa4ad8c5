"""eval.py --save_predictions / --visualize on a tiny demo split with an untrained checkpoint."""
import json

import pytest
import torch
from helpers import tiny_args
from PIL import Image
from torchvision.ops import box_iou

from datasets import build_tokenizer, demo
from eval import get_args_parser, main
from models import build_model
from models.checkpoint import json_config, tokenizer_info
from utils.files import atomic_save


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    demo.main(["--output_dir", str(root / "demo"), "--seed", "5", "--train", "4", "--val", "2", "--test", "10"])
    args = tiny_args("--dataset", "demo")
    args.bert_vocab_size = len(build_tokenizer(args))
    torch.manual_seed(0)
    atomic_save({"model": build_model(args).state_dict(), "args": json_config(args),
                 "tokenizer": tokenizer_info(build_tokenizer(args), args)}, root / "ckpt.pth")
    return root


def test_predictions_and_overlays(setup):
    root = setup
    flags = ["--checkpoint", str(root / "ckpt.pth"), "--eval_set", "test", "--device", "cpu", "--num_workers", "0",
             "--data_root", str(root / "demo"), "--split_root", str(root / "demo" / "split"),
             "--output_dir", str(root / "out"), "--save_predictions", str(root / "preds.jsonl"), "--visualize", "4",
             "--save_masks"]
    stats = main(get_args_parser().parse_args(flags))
    records = [json.loads(line) for line in (root / "preds.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(10)) == list(range(stats["count"]))
    assert sum(r["iou"] >= 0.5 for r in records) / 10 == pytest.approx(stats["accu"])
    for r in records:
        assert set(r) == {"image", "phrase", "box", "score", "gt_box", "iou", "index", "type", "mask"}
        with Image.open(r["mask"]) as mask, Image.open(r["image"]) as image:
            assert mask.size == image.size
        assert 0 <= r["score"] <= 1
        # Resizing is uniform and padding a shift: the IoU in image pixels equals the canvas IoU.
        pixel_iou = box_iou(torch.tensor([r["box"]]), torch.tensor([r["gt_box"]])).item()
        assert pixel_iou == pytest.approx(r["iou"], abs=0.02)
    # The demo has instance masks: the three maps are scored over every sample, per type too.
    report = json.loads((root / "out" / "eval_demo_test.json").read_text())
    for key in ("mask", "pred_box_mask", "gt_box_mask"):
        assert report[key]["count"] == 10 and sum(s["count"] for s in report[key]["by_type"].values()) == 10
    assert report["gt_box_mask"]["miou"] > 0.5  # the demo's shapes fill much of their boxes
    overlays = sorted(p.name for p in (root / "out" / "visualize").iterdir())
    ranked = sorted(records, key=lambda r: r["iou"])
    chosen = ranked[:2] + ranked[-2:]  # the two worst and the two best
    assert overlays == [f"{k:02d}_{r['index']}_iou{r['iou']:.2f}.png" for k, r in enumerate(chosen)]
