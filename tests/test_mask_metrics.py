"""Mask metrics against hand-computed values, rasterisation of polygons and RLEs, saved masks, and the RefCOCO-family
route: REFER annotations with masks built into a JSONL dataset that eval.py scores."""
import json

import numpy as np
import pytest
import torch
from helpers import tiny_args
from PIL import Image
from pycocotools import mask as coco_mask
from test_build_index import rectangle, refer_root  # noqa: F401 (a fixture)

import eval as eval_script
from datasets import build_index, build_tokenizer
from datasets.records import rasterize
from evaluation.mask_metrics import box_mask, intersection_union, save_png, summarize_masks
from models import build_model
from models.checkpoint import json_config, tokenizer_info
from utils.files import atomic_save


def square(top, left, side, shape=(10, 10)):
    mask = np.zeros(shape, bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_iou_terms_and_summaries_against_hand_computed_values():
    gt = square(0, 0, 2)  # 4 pixels
    assert intersection_union(np.zeros((10, 10), bool), gt) == (0, 4)  # empty prediction
    assert intersection_union(np.ones((10, 10), bool), gt) == (4, 100)  # the full image
    assert intersection_union(square(1, 1, 3), square(0, 0, 3)) == (4, 14)  # 2x2 of two 3x3 squares overlap
    empty = summarize_masks([(0, 0)])  # both masks empty: they agree
    assert empty["miou"] == 1.0 and empty["oiou"] == 1.0
    # A small object half found, a large one nearly: mIoU weighs expressions, oIoU pixels.
    stats = summarize_masks([(1, 2), (90, 100)])
    assert stats["miou"] == pytest.approx(0.7) and stats["oiou"] == pytest.approx(91 / 102)
    assert [stats[f"prec@{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)] == [1.0, 0.5, 0.5, 0.5, 0.5]
    assert summarize_masks([(0, 4), (4, 100)])["miou"] == pytest.approx(0.02)
    assert summarize_masks([])["count"] == 0


def test_polygon_rasterisation_matches_a_hand_drawn_mask():
    drawn = np.array([[0, 0, 0, 0, 0, 0, 0],
                      [0, 1, 1, 1, 1, 0, 0],
                      [0, 1, 1, 1, 1, 0, 0],
                      [0, 1, 1, 1, 1, 0, 0],
                      [0, 0, 0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0, 0]], bool)
    assert np.array_equal(rasterize([[1, 1, 5, 1, 5, 4, 1, 4]], 6, 7), drawn)
    # a filled box follows the same pixel-centre rule
    assert np.array_equal(box_mask([1, 1, 5, 4], 6, 7), drawn)
    # two parts of one object are merged
    both = rasterize([[1, 1, 5, 1, 5, 4, 1, 4], [5, 4, 7, 4, 7, 6, 5, 6]], 6, 7)
    assert both.sum() == drawn.sum() + 4 and both[4:6, 5:7].all()


def test_rle_and_polygons_give_the_same_mask():
    polygon = [[2.5, 1, 9, 3, 6, 8.5, 1, 6]]
    mask = rasterize(polygon, 10, 12)
    compressed = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert np.array_equal(rasterize({"size": [10, 12], "counts": compressed["counts"].decode()}, 10, 12), mask)
    flat = mask.flatten(order="F").astype(int)  # column-major run lengths, starting with zeros
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    assert np.array_equal(rasterize({"size": [10, 12], "counts": counts}, 10, 12), mask)


def test_a_saved_mask_reloads_equal(tmp_path):
    mask = rasterize([[2.5, 1, 9, 3, 6, 8.5, 1, 6]], 10, 12)
    save_png(mask.astype(np.uint8) * 255, tmp_path / "masks" / "m.png")
    with Image.open(tmp_path / "masks" / "m.png") as reloaded:
        assert np.array_equal(np.asarray(reloaded) > 0, mask)


def test_refer_masks_build_a_jsonl_dataset_that_eval_scores(refer_root, tmp_path):  # noqa: F811
    split_root = tmp_path / "split"
    with pytest.raises(SystemExit) as done:
        build_index.main(["refer", "--dataset", "unc", "--refer_root", str(refer_root), "--split_root",
                          str(split_root), "--with_masks"])
    assert done.value.code == 0
    records = [json.loads(line) for line in (split_root / "unc_masks" / "unc_masks_testA.jsonl").open()]
    assert [r["phrase"] for r in records] == ["man", "the man", "a man"]
    assert records[0]["box"] == [10, 20, 40, 60] and records[0]["mask"] == [rectangle([10, 20, 30, 40])]
    image = tmp_path / "images" / records[0]["image"]
    image.parent.mkdir(parents=True)
    Image.fromarray(np.full((80, 64, 3), 128, np.uint8)).save(image)

    args = tiny_args("--dataset", "demo")
    args.bert_vocab_size = len(build_tokenizer(args))
    torch.manual_seed(0)
    atomic_save({"model": build_model(args).state_dict(), "args": json_config(args),
                 "tokenizer": tokenizer_info(build_tokenizer(args), args)}, tmp_path / "ckpt.pth")
    stats = eval_script.main(eval_script.get_args_parser().parse_args([
        "--checkpoint", str(tmp_path / "ckpt.pth"), "--dataset", "unc_masks", "--eval_set", "testA", "--data_root",
        str(tmp_path / "images"), "--split_root", str(split_root), "--device", "cpu", "--num_workers", "0",
        "--output_dir", str(tmp_path / "out")]))
    report = json.loads((tmp_path / "out" / "eval_unc_masks_testA.json").read_text())
    for key in ("mask", "pred_box_mask", "gt_box_mask"):
        assert report[key]["count"] == stats[key]["count"] == 3
    assert report["gt_box_mask"]["miou"] == 1.0  # the ground-truth mask is its box here
    assert 0 <= report["mask"]["miou"] <= 1 and 0 <= report["pred_box_mask"]["oiou"] <= 1
