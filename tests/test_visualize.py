import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation.overlays import GT_COLOUR, PRED_COLOUR, draw_overlay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import plot_log  # noqa: E402


def test_overlay_draws_boxes_mask_and_caption():
    image = np.full((60, 80, 3), 128, np.uint8)
    mask = np.zeros((60, 80), np.float32)
    mask[10:30, 10:30] = 1.0
    out = np.asarray(draw_overlay(image, [40, 5, 70, 50], mask, "the red circle", 0.8, gt_box=[5, 35, 30, 55],
                                  iou=0.1, min_width=0))
    assert out.shape[1] == 80 and out.shape[0] > 60  # caption band below the image
    assert tuple(out[20, 40]) == PRED_COLOUR  # left edge of the predicted box
    assert tuple(out[45, 5]) == GT_COLOUR
    assert out[20, 20, 0] > 128 and out[20, 20, 1] < 128  # the mask tints red
    assert tuple(out[57, 75]) == (128, 128, 128)  # untouched elsewhere
    assert out[61:, :].max() == 255  # white caption text


def test_small_images_are_enlarged_by_a_whole_factor():
    image = np.zeros((20, 30, 3), np.uint8)
    out = np.asarray(draw_overlay(image, [3, 3, 10, 10], np.zeros((20, 30)), "x"))
    assert out.shape[1] == 330  # 11 x 30 >= 320
    assert tuple(out[3 * 11 + 20, 3 * 11]) == PRED_COLOUR  # the box scaled with the image


def test_plot_log_writes_png(tmp_path):
    log = tmp_path / "log.txt"
    rows = [{"epoch": e, "train_loss": 10 - e, "train_loss_focal": 1.0 / (e + 1), "train_lr": 1e-4,
             "validation_accu": 0.1 * e, "validation_miou": 0.05 * e} for e in range(4)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plot_log.main([str(log)])
    with Image.open(tmp_path / "curves.png") as png:
        assert png.width > 500


def test_plot_log_names_a_broken_line(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text('{"epoch": 0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        plot_log.main([str(log)])
