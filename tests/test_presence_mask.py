""""Not found" for any checkpoint: the mask's presence score on crafted maps, the threshold chosen on validation
(stored by training, reused by eval.py and the predictor, or chosen by eval.py on val), records that say the score's
source, the focal term that trains the maps toward empty on no-target phrases, the ONNX backend, and the app's answer
from the mask of a checkpoint without a presence head."""
import argparse
import json
from types import SimpleNamespace

import pytest
import torch
from helpers import model_inputs, noise_image, synthetic_batch, tiny_args, without_dropout, write_tiny_checkpoint

import eval as eval_script
import train
from datasets import demo
from evaluation.presence import (GRID_MAP, choose_threshold, mask_presence, parse_threshold, presence_source,
                                 score_and_threshold, segmentation_maps)
from inference import SegVGPredictor
from inference.app_request import ground
from models import build_criterion, build_model
from models.checkpoint import safe_load

PHRASES = ["the red circle", "the blue square"]


def test_mask_presence_is_the_mean_of_the_top_share_of_logits():
    logits = torch.full((3, 10, 10), -20.0)
    logits[1, :2, :2] = 30.0                     # an object of 4 pixels, so sure of itself that float32 gives 1.0
    logits[2] = torch.linspace(-10, 9.9, 100).view(10, 10)
    scores = mask_presence(logits, 10, top=0.04)  # the canvas is the map's size: the 4 highest of 100
    assert scores.dtype == torch.float64 and scores[0] == pytest.approx(torch.tensor(-20.0).sigmoid().item())
    assert scores[1] == torch.tensor(30.0, dtype=torch.float64).sigmoid() < 1.0
    assert scores[2] == pytest.approx(torch.linspace(-10, 9.9, 100)[-4:].double().mean().sigmoid().item())
    assert mask_presence(logits, 10, top=0.001)[1] == scores[1]  # at least one pixel: the maximum
    mean = (4 * 30.0 + 96 * -20.0) / 100
    assert mask_presence(logits, 10, top=1.0)[1] == pytest.approx(torch.tensor(mean).double().sigmoid().item())
    # On a larger canvas the map is upsampled bilinearly first: an empty map stays empty.
    assert mask_presence(logits, 40, top=0.01)[0] == pytest.approx(scores[0].item())
    # Two maps of the same phrases (a fine head's and the grid head's it refines, of another size): the mean of
    # their top-share means.
    top_grid = torch.tensor([-4.0, 10.0, 2.0])
    both = mask_presence([logits, top_grid.view(3, 1, 1).expand(3, 5, 5)], 10, top=0.04)
    fine_means = torch.stack([torch.tensor(-20.0), torch.tensor(30.0), torch.linspace(-10, 9.9, 100)[-4:].mean()])
    assert torch.allclose(both, ((fine_means + top_grid) / 2).double().sigmoid())


@pytest.mark.parametrize("mask_head", ["grid", "fine"])
def test_mask_presence_reads_every_map_the_model_has(mask_head):
    args = tiny_args("--mask_head", mask_head)
    torch.manual_seed(0)
    model = build_model(args).eval()
    with torch.no_grad():
        out = model(*model_inputs(synthetic_batch(args, batch=2)), aux=False)
    maps = segmentation_maps(out)
    assert len(maps) == (2 if mask_head == "fine" else 1) and maps[0] is out["seg_logits"]
    if mask_head == "fine":  # the grid head's map, which the fine head refines at a higher resolution
        assert maps[1] is out[GRID_MAP] and maps[1].shape[-1] < maps[0].shape[-1]


def test_the_chosen_threshold_maximises_n_acc_plus_t_acc():
    scores = [0.1, 0.2, 0.35, 0.4, 0.7, 0.8, 0.9]
    labels = [False, False, True, False, True, True, True]
    threshold, n_acc, t_acc = choose_threshold(scores, labels)
    assert threshold == pytest.approx(0.55) and (n_acc, t_acc) == (1.0, 0.75)  # 1.75 against 1.67 at 0.275
    # 0.2 and 0.6 both give N-acc + T-acc = 1.5: the lowest is taken.
    assert choose_threshold([0.1, 0.3, 0.5, 0.7], [False, True, False, True]) == (pytest.approx(0.2), 0.5, 1.0)
    assert choose_threshold([0.2, 0.8], [False, True])[1:] == (1.0, 1.0)
    with pytest.raises(ValueError, match="needs phrases with a target and phrases without"):
        choose_threshold([0.2, 0.8], [True, True])
    assert parse_threshold("auto") == "auto" and parse_threshold("0.25") == 0.25
    with pytest.raises(argparse.ArgumentTypeError, match="give a number"):
        parse_threshold("half")
    plain, with_head = SimpleNamespace(), SimpleNamespace(presence_head=torch.nn.Linear(1, 1))
    assert presence_source(None, plain) is None and presence_source(None, with_head) == "head"
    with pytest.raises(ValueError, match="has no presence head"):
        presence_source("both", plain)


@pytest.mark.parametrize("mask_head", ["grid", "fine"])
def test_no_target_phrases_train_the_maps_toward_empty(mask_head):
    args = tiny_args("--mask_head", mask_head)
    torch.manual_seed(0)
    model = without_dropout(build_model(args)).train()
    batch = synthetic_batch(args, batch=3)
    batch["n_targets"] = torch.tensor([1, 0, 2])
    batch["pos_region"][1] = False  # what the loader gives a phrase with no target
    outputs = model(*model_inputs(batch))
    off = build_criterion(args)(outputs, batch["target"], batch["pos_region"], batch)
    on = build_criterion(args, no_target_phrases=True)(outputs, batch["target"], batch["pos_region"], batch)
    for key in ("loss_bbox", "loss_giou", "loss_dice"):
        assert on[key] == off[key]  # the box and dice terms never see the no-target phrase
    # The focal term gains exactly the no-target phrase's: focal toward an all-zero mask on each of its maps.
    only = build_criterion(args, no_target_phrases=True)(outputs, batch["target"], batch["pos_region"],
                                                         {**batch, "n_targets": torch.tensor([1, 0, 1])})
    assert on["loss_focal"] > off["loss_focal"] and on["loss_focal"] == only["loss_focal"]
    grads = {}
    for name, losses in (("off", off), ("on", on)):
        model.zero_grad()
        logits = outputs["aux_seg_logits"]
        (grad,) = torch.autograd.grad(losses["loss"], logits, retain_graph=True)
        grads[name] = grad[:, :, 1].abs().sum()  # [layers, Q, B, g, g]: the no-target sample's maps
    assert grads["off"] == 0 and grads["on"] > 0
    if mask_head == "fine":
        assert on["loss_no_target"] > 0 and "loss_no_target" not in off
        (grad,) = torch.autograd.grad(on["loss_no_target"], outputs["seg_logits"], retain_graph=True)
        assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mask_presence")
    with_head = write_tiny_checkpoint(folder / "presence.pth", extra=("--presence_head",))
    plain = write_tiny_checkpoint(folder / "plain.pth", extra=("--mask_head", "fine"))  # two maps to read
    return with_head, plain, noise_image(folder / "photo.png")


def test_records_carry_found_and_the_source_for_each_presence_from(checkpoints):
    with_head, plain, photo = checkpoints
    head = SegVGPredictor.from_checkpoint(with_head, device="cpu")(photo, PHRASES)
    mask = SegVGPredictor.from_checkpoint(with_head, device="cpu", presence_from="mask")(photo, PHRASES)
    both = SegVGPredictor.from_checkpoint(with_head, device="cpu", presence_from="both",
                                          presence_threshold=0.0)(photo, PHRASES)
    for h, m, b in zip(head, mask, both):
        assert (h["presence_from"], m["presence_from"], b["presence_from"]) == ("head", "mask", "both")
        assert b["present"] == pytest.approx(h["present"] * m["present"], abs=2e-4) and b["found"] is True
        assert m["found"] == (m["present"] >= 0.5)
    plain_mask = SegVGPredictor.from_checkpoint(plain, device="cpu", presence_from="mask", presence_threshold=1.0)
    result = plain_mask(photo, PHRASES[0])
    assert result["presence_from"] == "mask" and result["found"] is False and 0 <= result["present"] <= 1
    with pytest.raises(ValueError, match="has no presence head"):
        SegVGPredictor.from_checkpoint(plain, device="cpu", presence_from="head")
    with pytest.raises(ValueError, match="holds no presence threshold for --presence_from mask"):
        SegVGPredictor.from_checkpoint(plain, device="cpu", presence_from="mask", presence_threshold="auto")


def test_the_app_answers_not_found_from_the_mask_of_a_checkpoint_without_a_head(checkpoints, tmp_path):
    _, plain, photo = checkpoints
    predictor = SegVGPredictor.from_checkpoint(plain, device="cpu", presence_from="mask", presence_threshold=1.0)
    answer = ground(predictor, str(photo), "\n".join(PHRASES), 0.5, True, tmp_path / "a")
    assert answer["rows"] == [] and [r["found"] for r in answer["records"]] == [False, False]
    assert all(r["presence_from"] == "mask" for r in answer["records"])
    assert sum("not found (presence from the mask" in note for note in answer["notes"]) == 2


def test_onnx_runtime_gives_pytorchs_mask_presence(checkpoints, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="pip install -r requirements-onnx.txt")
    pytest.importorskip("onnxscript", reason="pip install -r requirements-onnx.txt")
    from inference import onnx_export
    from inference.onnx_runtime import OUTPUT_NAMES, OnnxRuntimeModel
    from tools import export_onnx

    _, plain, photo = checkpoints
    path = tmp_path / "plain.onnx"
    assert export_onnx.main(["--checkpoint", str(plain), "--out", str(path)]) == 0
    onnx_predictor = SegVGPredictor.from_onnx(path, plain, presence_from="mask")
    assert GRID_MAP in onnx_predictor.model.output_names  # the fine head's export carries the grid map too
    onnx_result = onnx_predictor(photo, PHRASES)
    torch_result = SegVGPredictor.from_checkpoint(plain, device="cpu", presence_from="mask")(photo, PHRASES)
    for a, b in zip(onnx_result, torch_result):
        assert a["presence_from"] == b["presence_from"] == "mask"
        assert abs(a["present"] - b["present"]) <= 1e-3 and a["found"] == b["found"]
    # An export made before mask presence read both maps (the fine map alone) is refused for it, not misread.
    monkeypatch.setattr(onnx_export, "graph_outputs", lambda model: OUTPUT_NAMES)
    assert export_onnx.main(["--checkpoint", str(plain), "--out", str(tmp_path / "old.onnx"), "--batch", "1"]) == 0
    with pytest.raises(ValueError, match="old.onnx holds the fine head's map alone.*export the checkpoint again"):
        SegVGPredictor.from_onnx(tmp_path / "old.onnx", plain, presence_from="mask")
    with pytest.raises(ValueError, match="old.onnx holds the fine head's map alone"):  # eval.py asks the same
        presence_source("mask", OnnxRuntimeModel(tmp_path / "old.onnx"))
    SegVGPredictor.from_onnx(tmp_path / "old.onnx", plain)  # boxes and maps alone: still served


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few steps on the demo's gref level (a third of its phrases without a target): the run's checkpoints."""
    root = tmp_path_factory.mktemp("gref_run")
    data = root / "data"
    demo.main(["--output_dir", str(data), "--level", "gref", "--seed", "1", "--train", "64", "--val", "24",
               "--test", "24", "--no_target_share", "0.3"])
    args = train.get_args_parser().parse_args([
        "@tools/demo_flags.txt", "--dataset", "demo_gref", "--data_root", str(data), "--split_root",
        str(data / "split"), "--output_dir", str(root / "run"), "--device", "cpu", "--max_steps", "4",
        "--batch_size", "16", "--eval_every", "0", "--presence_head", "--imsize", "32"])
    train.main(args)
    return data, root / "run"


def test_training_stores_the_thresholds_and_auto_reuses_them(trained, tmp_path, capsys):
    data, run = trained
    stored = safe_load(run / "best_checkpoint.pth")["presence_thresholds"]
    assert set(stored) == {"head", "mask", "both"} and stored["mask"]["split"] == "demo_gref:val"
    common = ["--checkpoint", str(run / "best_checkpoint.pth"), "--eval_set", "test", "--device", "cpu",
              "--num_workers", "0", "--output_dir", str(tmp_path / "eval"), "--save_predictions",
              str(tmp_path / "records.jsonl")]
    stats = eval_script.main(eval_script.get_args_parser().parse_args(
        common + ["--presence_from", "mask", "--presence_threshold", "auto"]))
    assert stats["presence_threshold"] == stored["mask"]["threshold"] and stats["presence_from"] == "mask"
    assert "the checkpoint's, chosen on demo_gref:val" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "eval_demo_gref_test.json").read_text())
    assert report["presence_threshold_chosen_on"] == "demo_gref:val (stored in the checkpoint)"
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert all(r["presence_from"] == "mask" and r["found"] == (r["present"] >= stats["presence_threshold"])
               for r in records)
    assert set(stats["presence_by_source"]) == {"head", "mask", "both"}
    # The predictor reads the stored threshold too.
    predictor = SegVGPredictor.from_checkpoint(run / "best_checkpoint.pth", device="cpu", presence_from="both",
                                               presence_threshold="auto")
    assert predictor.presence_threshold == stored["both"]["threshold"]
    # A checkpoint without stored thresholds (an official one, say): chosen now on the dataset's val split.
    bare = safe_load(run / "best_checkpoint.pth")
    del bare["presence_thresholds"]
    torch.save(bare, tmp_path / "bare.pth")
    common[1] = str(tmp_path / "bare.pth")
    stats = eval_script.main(eval_script.get_args_parser().parse_args(
        common + ["--presence_from", "mask", "--presence_threshold", "auto"]))
    assert "chosen now on demo_gref:val" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "eval_demo_gref_test.json").read_text())
    assert report["presence_threshold_chosen_on"] == "demo_gref:val"
    # The same model and split as the run's last validation (up to the fast path's float rounding).
    assert stats["presence_threshold"] == pytest.approx(stored["mask"]["threshold"], abs=1e-4)


def test_a_score_beside_its_threshold_prints_with_the_digits_that_tell_them_apart():
    assert score_and_threshold(0.99999750001, 0.9999976) == ("0.9999975", "0.9999976")
    assert score_and_threshold(0.42, 0.5) == ("0.42", "0.5")
