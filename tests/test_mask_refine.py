"""--mask_refine grabcut: GrabCut from a box and a coarse map finds a shape on a synthetic image, falls back where it
has nothing to work with, and gets its own row in eval.py and its own files in predict.py."""
import json

import cv2
import numpy as np
import pytest
from helpers import noise_image, write_tiny_checkpoint
from PIL import Image

import eval as eval_script
import predict
from datasets import demo
from evaluation.mask_metrics import intersection_union
from evaluation.mask_refine import grabcut, refine_mask


def iou(a, b):
    inter, union = intersection_union(a, b)
    return inter / union


def disc_scene(height=120, width=160, seed=0):
    """A red disc on a noisy grey-green background; its box; a coarse map: the box filled (what a grid head gives)."""
    rng = np.random.default_rng(seed)
    rgb = np.clip(rng.normal((110, 130, 110), 12, (height, width, 3)), 0, 255).astype(np.uint8)
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, (90, 60), 30, 1, -1)
    rgb[disc > 0] = (200, 40, 40)
    box = [60.0, 30.0, 121.0, 91.0]
    prob = np.zeros((height, width), np.float32)
    prob[30:91, 60:121] = 0.8
    return rgb, disc.astype(bool), box, prob


def test_grabcut_finds_the_shape_inside_the_box():
    rgb, disc, box, prob = disc_scene()
    refined = grabcut(rgb, box, prob)
    assert iou(prob > 0.5, disc) < 0.8  # the filled box: pi / 4 of it
    assert iou(refined, disc) > 0.95
    assert not refined[:, :55].any()  # outside the box's neighbourhood nothing changes
    np.testing.assert_array_equal(refine_mask("grabcut", rgb, box, prob), refined)  # deterministic


def test_grabcut_bounds_its_resolution_and_falls_back():
    rgb, disc, box, prob = disc_scene()
    big_rgb = cv2.resize(rgb, (1600, 1200), interpolation=cv2.INTER_NEAREST)
    big_disc = cv2.resize(disc.astype(np.uint8), (1600, 1200), interpolation=cv2.INTER_NEAREST).astype(bool)
    big_prob = cv2.resize(prob, (1600, 1200), interpolation=cv2.INTER_NEAREST)
    assert iou(grabcut(big_rgb, [b * 10 for b in box], big_prob), big_disc) > 0.9
    whole = [0.0, 0.0, 160.0, 120.0]  # no background left to learn from: the map as it is
    np.testing.assert_array_equal(grabcut(rgb, whole, prob), prob > 0.5)
    np.testing.assert_array_equal(grabcut(rgb, [10.0, 10.0, 10.5, 40.0], prob), prob > 0.5)  # an empty box
    with pytest.raises(ValueError, match="unknown mask refinement"):
        refine_mask("crf", rgb, box, prob)


def test_grabcut_that_finds_no_foreground_keeps_the_models_mask(monkeypatch):
    """OpenCV's colour models can hand the whole box to the background (a third of the demo's flat-coloured images):
    an empty refinement of a non-empty prediction is a failure, and the model's mask stands."""
    rgb, disc, box, prob = disc_scene()

    def everything_background(image, mask, *args):
        mask[mask == cv2.GC_PR_FGD] = cv2.GC_PR_BGD

    monkeypatch.setattr(cv2, "grabCut", everything_background)
    np.testing.assert_array_equal(grabcut(rgb, box, prob), prob > 0.5)


def test_unknown_refinement_is_refused():
    rgb, _, box, prob = disc_scene()
    with pytest.raises(ValueError, match="unknown mask refinement"):
        refine_mask("crf", rgb, box, prob)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("refine") / "ckpt.pth")


def test_eval_reports_a_refined_row_beside_the_model_mask(checkpoint, tmp_path, capsys):
    root = tmp_path / "demo"
    demo.main(["--output_dir", str(root), "--seed", "4", "--train", "4", "--val", "2", "--test", "6"])
    flags = ["--checkpoint", str(checkpoint), "--eval_set", "test", "--device", "cpu", "--num_workers", "0",
             "--data_root", str(root), "--split_root", str(root / "split"), "--output_dir", str(tmp_path / "out")]
    plain = eval_script.main(eval_script.get_args_parser().parse_args(flags))
    refined = eval_script.main(eval_script.get_args_parser().parse_args(
        flags + ["--mask_refine", "grabcut", "--save_masks", "--save_predictions", str(tmp_path / "p.jsonl")]))
    printed = capsys.readouterr().out
    assert "grabcut refined" in printed and "ms per expression" in printed
    assert refined["mask"] == plain["mask"]  # the model's row is never refined
    assert refined["grabcut_mask"]["count"] == 6 and 0 <= refined["grabcut_mask"]["miou"] <= 1
    assert refined["mask_refine"]["method"] == "grabcut" and refined["mask_refine"]["ms_per_expression"] > 0
    report = json.loads((tmp_path / "out" / "eval_demo_test.json").read_text())
    assert {"mask", "pred_box_mask", "gt_box_mask", "grabcut_mask"} <= set(report)
    record = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert record["grabcut_mask"].endswith(".png") and (tmp_path / "out" / "masks_grabcut").is_dir()


def test_predict_writes_refined_masks(checkpoint, tmp_path):
    image = noise_image(tmp_path / "photo.png", 80, 60)
    out = tmp_path / "preds"
    records = predict.main(["--checkpoint", str(checkpoint), "--image", str(image), "--phrase", "the red circle",
                            "--output_dir", str(out), "--save_masks", "--mask_refine", "grabcut", "--device", "cpu"])
    with Image.open(records[0]["grabcut_mask"]) as refined:
        assert refined.size == (80, 60) and set(np.unique(np.asarray(refined))) <= {0, 255}
    record = json.loads((out / "predictions.jsonl").read_text())
    assert record["grabcut_mask"].startswith(str(out / "masks_grabcut"))
    assert (out / "masks_grabcut").is_dir() and record["mask"] != record["grabcut_mask"]
