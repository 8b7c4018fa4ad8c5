import json
import warnings

import numpy as np
import pytest
import torch
from helpers import noise_image, tiny_args, write_tiny_checkpoint
from PIL import Image
from torch import nn

import predict
from datasets import build_tokenizer
from datasets.transforms import canvas_to_image, eval_placement, make_transforms
from evaluation.segmentation_map import segmentation_confidence
from inference import SegVGPredictor


def demo_args():
    args = tiny_args("--dataset", "demo")
    args.bert_vocab_size = len(build_tokenizer(args))
    return args


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_checkpoint.pth")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    return noise_image(tmp_path_factory.mktemp("img") / "photo.jpg")


class CanvasBoxModel(nn.Module):
    """Stands in for SegVG: always predicts the given normalised canvas box and a flat mask."""

    def __init__(self, box_cxcywh, grid):
        super().__init__()
        self.box = box_cxcywh
        self.grid = grid

    def forward(self, img, img_mask, text_ids, text_mask, aux=False, image_index=None):
        batch = text_ids.shape[0]
        return {"pred_boxes": self.box.expand(batch, 4), "seg_logits": torch.zeros(batch, self.grid, self.grid)}


@pytest.mark.parametrize("size", [(150, 90), (90, 150), (64, 64), (301, 47), (33, 200)])
def test_canvas_box_maps_back_to_the_original_box(size):
    """A prediction at the canvas position of a known box maps back to that box, whatever the aspect ratio."""
    args = demo_args()
    w, h = size
    known = np.float32([0.1 * w, 0.3 * h, 0.75 * w, 0.9 * h])
    # Where the evaluation transform puts the known box on the canvas: a perfect model's output.
    placed = make_transforms(args, train=False)({"img": np.zeros((h, w, 3), np.uint8), "box": known, "text": ""})
    model = CanvasBoxModel(placed["target"][None], args.imsize // 32)
    predictor = SegVGPredictor(model, build_tokenizer(args), args, fast=False)  # a stand-in, nothing to fold
    result = predictor(np.zeros((h, w, 3), np.uint8), "the red circle")
    np.testing.assert_allclose(result["box"], known, atol=0.01)
    assert result["mask"].shape == (h, w)


def test_eval_placement_is_where_the_transform_puts_the_image():
    args = demo_args()
    np.testing.assert_allclose(eval_placement(128, 64, args), [0, 16, 64, 48])
    np.testing.assert_allclose(eval_placement(30, 60, args), [16, 0, 48, 64])


def test_canvas_to_image_clips_to_the_image():
    placement = torch.tensor([0.0, 16.0, 64.0, 48.0])  # a 2:1 image letterboxed on a 64 canvas
    boxes = torch.tensor([[-5.0, 10.0, 70.0, 40.0]])
    np.testing.assert_allclose(canvas_to_image(boxes, placement, (128, 64))[0], [0, 0, 128, 48])


def test_fast_path_predicts_as_the_plain_model(checkpoint, image_file):
    fast = SegVGPredictor.from_checkpoint(checkpoint, device="cpu")(image_file, "the red circle")
    plain = SegVGPredictor.from_checkpoint(checkpoint, device="cpu", fast=False)(image_file, "the red circle")
    np.testing.assert_allclose(fast["box"], plain["box"], atol=0.02)
    np.testing.assert_allclose(fast["mask"], plain["mask"], atol=1e-4)
    assert fast["score"] == pytest.approx(plain["score"], abs=1e-4)


def test_api_accepts_path_pil_and_array_alike(checkpoint, image_file):
    predictor = SegVGPredictor.from_checkpoint(checkpoint, device="cpu")
    rgb = np.asarray(Image.open(image_file).convert("RGB"))
    results = [predictor(source, "the red circle") for source in (image_file, Image.open(image_file), rgb)]
    for result in results:
        assert result["box"] == results[0]["box"]
        assert 0 <= result["box"][0] <= result["box"][2] <= 150 and 0 <= result["box"][1] <= result["box"][3] <= 90
        assert 0 <= result["score"] <= 1
        assert result["mask"].shape == (90, 150)


def test_cli_agrees_with_api_and_writes_overlays(checkpoint, image_file, tmp_path, capsys):
    out = tmp_path / "vis.png"
    results = predict.main(["--checkpoint", str(checkpoint), "--image", str(image_file), "--phrase", "the red circle",
                            "--text", "the leftmost shape", "--out", str(out), "--json", "--device", "cpu"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    api = SegVGPredictor.from_checkpoint(checkpoint, device="cpu")
    for record, phrase in zip(records, ["the red circle", "the leftmost shape"]):
        expected = api(image_file, phrase)
        assert set(record) == {"image", "phrase", "box", "score", "image_size", "overlay"}
        assert record["image"] == str(image_file) and record["phrase"] == phrase
        np.testing.assert_allclose(record["box"], expected["box"], atol=0.01)
        assert record["score"] == pytest.approx(expected["score"], abs=1e-4)
    assert [r["phrase"] for r in results] == ["the red circle", "the leftmost shape"]
    for k in range(2):
        with Image.open(tmp_path / f"vis_{k}.png") as overlay:
            assert overlay.width == 450 and overlay.height > 270  # enlarged x3 to stay readable


def test_pairs_in_batches_equal_one_by_one_predictions(checkpoint, tmp_path, capsys):
    """Images of different sizes batched together (letterboxed on one canvas) predict what each does alone."""
    rng = np.random.default_rng(1)
    images = []
    for k, (w, h) in enumerate([(150, 90), (60, 120), (64, 64)]):
        images.append(tmp_path / f"image_{k}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images[-1])
    phrases = ["the red circle", "the leftmost shape", "the blue one"]
    pairs = tmp_path / "pairs.jsonl"
    # relative image paths (to the pairs file's folder), and the old "text" key on one line
    pairs.write_text("\n".join(json.dumps({"image": image.name, ("text" if k == 2 else "phrase"): phrase})
                               for k, (image, phrase) in enumerate(zip(images, phrases))))
    predict.main(["--checkpoint", str(checkpoint), "--pairs", str(pairs), "--batch_size", "3", "--device", "cpu",
                  "--output_dir", str(tmp_path / "out"), "--visualize", "2"])
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["phrase"] for r in records] == phrases
    single = SegVGPredictor.from_checkpoint(checkpoint, device="cpu")
    for record, image, phrase in zip(records, images, phrases):
        alone = single(image, phrase)
        np.testing.assert_allclose(record["box"], alone["box"], atol=0.02)
        assert record["score"] == pytest.approx(alone["score"], abs=1e-4)
    assert records[0]["box"] != records[1]["box"]  # the comparison is not between identical outputs
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == ["0000.png", "0001.png"]


@pytest.mark.parametrize("size", [(4000, 3), (2, 900)])
def test_very_thin_images_are_predicted(checkpoint, size):
    predictor = SegVGPredictor.from_checkpoint(checkpoint, "cpu")
    result = predictor(np.full((size[1], size[0], 3), 128, np.uint8), "the dog")
    x1, y1, x2, y2 = result["box"]
    assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1] and result["mask"].shape == (size[1], size[0])


def test_bad_input_gets_clear_messages(checkpoint, image_file, tmp_path):
    predictor = SegVGPredictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        predictor(tmp_path / "nowhere.jpg", "the red circle")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.png", "phrase": "x"}\n{"image": "b.png"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: expected"):
        predict.main(["--checkpoint", str(checkpoint), "--pairs", str(pairs)])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        predictor(broken, "the red circle")
    with pytest.raises(ValueError, match="empty"):
        predictor(image_file, "  ")
    with pytest.warns(UserWarning, match="truncated"):
        predictor(image_file, "the red circle " * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor(image_file, "the red circle")


def test_segmentation_confidence_is_the_mean_above_threshold():
    prob = torch.tensor([[[0.9, 0.5], [0.2, 0.34]]])
    assert segmentation_confidence(prob).item() == pytest.approx(0.7)
    assert segmentation_confidence(torch.zeros(1, 2, 2)).item() == 0
