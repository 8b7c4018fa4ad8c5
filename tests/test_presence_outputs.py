"""Where a prediction leaves a model with a presence head: SegVGPredictor, predict.py (screen, JSON, folder), the
app's request and the ONNX export carry "present" and "found" (and "boxes" with --boxes_from_mask); a checkpoint
without the head answers as before."""
import json

import numpy as np
import pytest
from helpers import noise_image, write_tiny_checkpoint
from PIL import Image

import predict
from inference import SegVGPredictor
from inference.app_request import ground

PHRASES = ["the red circle", "the blue square"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presence")
    with_head = write_tiny_checkpoint(folder / "presence.pth", extra=("--presence_head", "--mask_head", "fine"))
    plain = write_tiny_checkpoint(folder / "plain.pth")
    return with_head, plain, noise_image(folder / "photo.png")


def test_predictor_answers_present_and_found_at_its_threshold(checkpoints):
    with_head, plain, photo = checkpoints
    results = SegVGPredictor.from_checkpoint(with_head, device="cpu", boxes_from_mask=True)(photo, PHRASES)
    for result in results:
        assert 0 < result["present"] < 1 and result["found"] == (result["present"] >= 0.5)
        assert all(len(box) == 5 and box[0] < box[2] and box[1] < box[3] for box in result["boxes"])
        assert sum(box[4] > 0 for box in result["boxes"]) == len(result["boxes"])
    never = SegVGPredictor.from_checkpoint(with_head, device="cpu", presence_threshold=1.01)(photo, PHRASES[0])
    assert never["found"] is False and never["present"] == results[0]["present"]
    assert not {"present", "found", "boxes"} & set(SegVGPredictor.from_checkpoint(plain, device="cpu")(photo, "a"))


def test_predict_py_records_on_screen_and_in_a_folder(checkpoints, tmp_path, capsys):
    with_head, plain, photo = checkpoints
    common = ["--image", str(photo), "--phrase", PHRASES[0], "--phrase", PHRASES[1], "--device", "cpu"]
    predict.main(["--checkpoint", str(with_head), *common, "--json", "--presence_threshold", "1.01"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["found"] for r in records] == [False, False] and all(0 < r["present"] < 1 for r in records)
    predict.main(["--checkpoint", str(with_head), *common, "--presence_threshold", "1.01"])
    assert capsys.readouterr().out.count("not found (presence") == 2
    predict.main(["--checkpoint", str(with_head), *common, "--output_dir", str(tmp_path / "out"),
                  "--boxes_from_mask", "--presence_threshold", "0"])
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["found"] for r in records] == [True, True] and all("boxes" in r for r in records)
    predict.main(["--checkpoint", str(plain), *common, "--json"])
    assert all("present" not in json.loads(line) for line in capsys.readouterr().out.splitlines())


def test_app_request_draws_nothing_for_a_phrase_not_found(checkpoints, tmp_path):
    with_head, _, photo = checkpoints
    predictor = SegVGPredictor.from_checkpoint(with_head, device="cpu", boxes_from_mask=True, presence_threshold=0)
    found = ground(predictor, str(photo), "\n".join(PHRASES), 0.0, True, tmp_path / "a")
    assert [r["found"] for r in found["records"]] == [True, True]
    # Threshold 0: every pixel is in the mask, one component, one box per phrase, in its colour.
    assert len(found["rows"]) == 2 and all(len(r["boxes"]) == 1 for r in found["records"])
    predictor.presence_threshold = 1.01
    absent = ground(predictor, str(photo), "\n".join(PHRASES), 0.5, True, tmp_path / "b")
    assert [r["found"] for r in absent["records"]] == [False, False] and absent["rows"] == []
    assert sum("not found (presence" in note for note in absent["notes"]) == 2
    with Image.open(photo) as original:  # nothing drawn: the photo itself, enlarged
        np.testing.assert_array_equal(np.asarray(absent["image"].resize(original.size, Image.NEAREST)),
                                      np.asarray(original.convert("RGB")))


def test_onnx_export_carries_the_presence_logit(checkpoints, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install -r requirements-onnx.txt")
    pytest.importorskip("onnxscript", reason="pip install -r requirements-onnx.txt")
    from tools import export_onnx

    with_head, _, photo = checkpoints
    path = tmp_path / "presence.onnx"
    assert export_onnx.main(["--checkpoint", str(with_head), "--out", str(path)]) == 0
    onnx_result = SegVGPredictor.from_onnx(path, with_head)(photo, PHRASES)
    torch_result = SegVGPredictor.from_checkpoint(with_head, device="cpu")(photo, PHRASES)
    for a, b in zip(onnx_result, torch_result):
        assert a["present"] == pytest.approx(b["present"], abs=1e-3) and a["found"] == b["found"]
