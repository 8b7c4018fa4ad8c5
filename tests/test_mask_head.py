"""The fine mask head: its map's size and default stride, the backbone's finer maps, the inference fast path and
activation checkpointing, checkpoints that record their head (older ones load as the grid head), fine-tuning a grid
checkpoint into a fine one, and a fine checkpoint through predict.py, eval.py and ONNX."""
import copy
import json

import numpy as np
import pytest
import torch
from helpers import (model_inputs, noise_image, synthetic_batch, tiny_args, tiny_train_args, trained_weights,
                     without_dropout, write_tiny_checkpoint)
from PIL import Image

import eval as eval_script
import predict
from datasets import demo
from inference.fast_path import prepare_for_inference
from models import build_model
from models.checkpoint import CheckpointError, load_weights, resolve_config, safe_load
from models.pretrained import load_from_checkpoint
from models.criterion import build_criterion
from models.mask_head import default_mask_stride

FINE = ("--mask_head", "fine")


@pytest.mark.parametrize("extra, side", [((), 2), (FINE, 32), (FINE + ("--mask_stride", "4"), 16),
                                         (FINE + ("--mask_stride", "1", "--backbone_stride", "8"), 64)])
def test_the_mask_leaves_the_model_at_the_heads_resolution(extra, side):
    args = tiny_args(*extra)
    model = build_model(args).eval()
    out = model(*model_inputs(synthetic_batch(args, batch=2)), aux=False)
    assert out["seg_logits"].shape == (2, side, side)
    assert (model.mask_head is None) == ("fine" not in extra)


def test_default_stride_suits_the_canvas():
    assert default_mask_stride(640) == 4 and default_mask_stride(48) == 2 and default_mask_stride(64) == 2


def test_the_grid_head_is_the_original_model():
    """No new parameter and the same forward when --mask_head is left at grid (parity needs it)."""
    grid = build_model(tiny_args())
    fine = build_model(tiny_args(*FINE))
    extra = set(fine.state_dict()) - set(grid.state_dict())
    assert extra and all(k.startswith("mask_head.") for k in extra)
    assert set(grid.state_dict()) <= set(fine.state_dict())


def test_backbone_hands_over_its_finer_maps():
    args = tiny_args(*FINE, "--backbone_stride", "16", "--mask_stride", "2")
    backbone = build_model(args).visual.backbone
    last, finer = backbone(torch.randn(1, 3, 64, 64))
    assert last.shape == (1, 256, 4, 4)  # resnet18 layer3
    assert {s: tuple(f.shape) for s, f in finer.items()} == {8: (1, 128, 8, 8), 4: (1, 64, 16, 16),
                                                             2: (1, 64, 32, 32)}
    assert backbone.feature_channels == {8: 128, 4: 64, 2: 64}


def test_fast_path_keeps_the_fine_map():
    args = tiny_args(*FINE, "--backbone_norm", "batch")
    torch.manual_seed(0)
    model = build_model(args)
    model.train()
    model(*model_inputs(synthetic_batch(args, batch=4)))  # running statistics that are not the identity
    model.eval()
    batch = synthetic_batch(args, batch=2, seed=1)
    with torch.no_grad():
        plain = model(*model_inputs(batch), aux=False)
        fast = prepare_for_inference(copy.deepcopy(model))(*model_inputs(batch), aux=False)
    torch.testing.assert_close(fast["seg_logits"], plain["seg_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast["pred_boxes"], plain["pred_boxes"], atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    args = tiny_train_args(*FINE)
    batch = synthetic_batch(args, batch=2)
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = without_dropout(build_model(args))
        model.set_activation_checkpointing(enabled)
        losses = build_criterion(args)(model(*model_inputs(batch)), batch["target"], batch["pos_region"], batch)
        losses["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("mask_head.") for k in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("gradient", ["shared", "head"])
def test_detached_head_trains_the_head_alone(gradient):
    """--mask_head_gradient head: the fine map's gradient reaches the head's parameters and nothing under it."""
    args = tiny_train_args(*FINE, "--mask_head_gradient", gradient)
    model = without_dropout(build_model(args))
    model(*model_inputs(synthetic_batch(args, batch=2)))["seg_logits"].sum().backward()
    reached = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "mask_head" in reached
    assert (reached == {"mask_head"}) == (gradient == "head"), reached


def test_a_detached_head_leaves_the_rest_training_as_the_grid_head():
    """--mask_head_gradient head (the default): from the same seed the rest of the model starts from the grid-head
    model's weights and trains exactly as it does (dropout and gradient clipping included), so the boxes are the grid
    head's."""
    def trained(*extra):
        args = tiny_train_args("--clip_max_norm", "0.1", *extra)
        return trained_weights(args, [synthetic_batch(args, 4, seed=k) for k in range(3)])

    grid, fine = trained(), trained(*FINE)
    assert set(grid) < set(fine)
    for name, value in grid.items():
        assert torch.equal(fine[name], value), name
    # --mask_head_samples: the head trains on the first samples only, the rest still as the grid head's.
    half = trained(*FINE, "--mask_head_samples", "2")
    for name, value in grid.items():
        assert torch.equal(half[name], value), name
    head = [name for name in fine if name.startswith("mask_head.")]
    assert any(not torch.equal(half[name], fine[name]) for name in head)


def test_the_head_on_the_first_samples_is_the_head_on_those_samples_alone():
    """--mask_head_samples N: its map and terms are those of a batch holding the first N samples only."""
    args = tiny_train_args(*FINE, "--mask_head_samples", "2")
    torch.manual_seed(0)
    model, criterion = without_dropout(build_model(args)), build_criterion(args)
    batch = synthetic_batch(args, 4)
    outputs = model(*model_inputs(batch))
    assert outputs["seg_logits"].shape[0] == 2 and outputs["pred_boxes"].shape[0] == 4
    losses = criterion(outputs, batch["target"], batch["pos_region"], batch)
    model.mask_head_samples = 0
    first = {k: v[:2] for k, v in batch.items()}
    alone = criterion(model(*model_inputs(first)), first["target"], first["pos_region"], first)
    for name in ("loss_projection", "loss_box_fill", "loss_pairwise"):
        torch.testing.assert_close(losses[name], alone[name])
    model.eval()
    assert model(*model_inputs(batch))["seg_logits"].shape[0] == 4  # evaluation: every sample


def test_seg_loss_off_turns_the_fine_terms_off_too():
    args = tiny_train_args(*FINE, "--seg_loss", "off")
    batch = synthetic_batch(args)
    batch["img"] = torch.zeros_like(batch["img"])  # one colour: every pair in a box counts
    losses = build_criterion(args)(build_model(args)(*model_inputs(batch)), batch["target"], batch["pos_region"],
                                   batch)
    assert "loss_projection" not in losses and "loss_pairwise" not in losses
    on = tiny_train_args(*FINE)
    losses = build_criterion(on)(build_model(on)(*model_inputs(batch)), batch["target"], batch["pos_region"], batch)
    assert losses["loss_projection"] > 0 and losses["loss_pairwise"] > 0


@pytest.fixture(scope="module")
def fine_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("fine") / "best_checkpoint.pth", extra=FINE)


def test_checkpoints_record_their_head_and_older_ones_load_as_grid(fine_checkpoint, tmp_path):
    model, _, args, _ = load_from_checkpoint(fine_checkpoint)
    assert args.mask_head == "fine" and model.mask_head is not None
    older = safe_load(fine_checkpoint)
    del older["args"]["mask_head"], older["args"]["mask_stride"]
    older["model"] = {k: v for k, v in older["model"].items() if not k.startswith("mask_head.")}
    args, _ = resolve_config(older)
    assert args.mask_head == "grid"


def test_a_grid_checkpoint_fine_tunes_into_a_fine_head(tmp_path):
    grid_path = write_tiny_checkpoint(tmp_path / "grid.pth")
    grid = safe_load(grid_path)
    args, _ = resolve_config(grid, {"mask_head": "fine"})
    torch.manual_seed(1)
    model = build_model(args)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("mask_head.")}
    with pytest.raises(CheckpointError, match="mask_head"):
        load_weights(build_model(args), grid, False)  # an evaluation never starts a head from nothing
    load_weights(model, grid, False, new_mask_head=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], grid["model"][k]) for k in grid["model"])
    assert all(torch.equal(state[k], v) for k, v in head.items())


def test_fine_checkpoint_through_predict_and_eval(fine_checkpoint, tmp_path):
    image = noise_image(tmp_path / "photo.png", 90, 60)
    out = tmp_path / "preds"
    records = predict.main(["--checkpoint", str(fine_checkpoint), "--image", str(image), "--phrase", "the red circle",
                            "--output_dir", str(out), "--save_masks", "--device", "cpu"])
    with Image.open(records[0]["mask"]) as mask:
        assert mask.size == (90, 60)
    record = json.loads((out / "predictions.jsonl").read_text())
    assert (out / "masks").is_dir() and record["mask"].endswith(".png")

    root = tmp_path / "demo"
    demo.main(["--output_dir", str(root), "--seed", "3", "--train", "4", "--val", "2", "--test", "6"])
    flags = ["--checkpoint", str(fine_checkpoint), "--eval_set", "test", "--device", "cpu", "--num_workers", "0",
             "--data_root", str(root), "--split_root", str(root / "split"), "--output_dir", str(tmp_path / "eval")]
    stats = eval_script.main(eval_script.get_args_parser().parse_args(flags))
    report = json.loads((tmp_path / "eval" / "eval_demo_test.json").read_text())
    assert stats["count"] == 6 and {"mask", "pred_box_mask", "gt_box_mask"} <= set(report)
    assert all("miou" in report[key] for key in ("mask", "pred_box_mask", "gt_box_mask"))


@pytest.mark.slow
def test_fine_checkpoint_exports_to_onnx(fine_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install -r requirements-onnx.txt")
    pytest.importorskip("onnxscript", reason="pip install -r requirements-onnx.txt")
    from inference.onnx_export import compare_with_onnxruntime
    from tools import export_onnx

    path = tmp_path / "fine.onnx"
    assert export_onnx.main(["--checkpoint", str(fine_checkpoint), "--out", str(path)]) == 0
    model, tokenizer, args, _ = load_from_checkpoint(fine_checkpoint)
    worst = compare_with_onnxruntime(prepare_for_inference(model, channels_last=False), args, tokenizer, path,
                                     batches=(1, 2))
    assert worst["boxes"] <= 1e-4 and worst["probabilities"] <= export_onnx.PROBABILITY_TOLERANCE
    from inference import SegVGPredictor

    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    onnx = SegVGPredictor.from_onnx(path, fine_checkpoint)(image, "the red circle")
    torch_result = SegVGPredictor.from_checkpoint(fine_checkpoint, device="cpu")(image, "the red circle")
    np.testing.assert_allclose(onnx["box"], torch_result["box"], atol=0.02)
    np.testing.assert_allclose(onnx["mask"], torch_result["mask"], atol=1e-3)
