"""ONNX export and the ONNX Runtime backend on a small model: the export checks out, ONNX Runtime agrees with
PyTorch within the stated tolerances, predictions through either backend are the same records, and bad files are
one clear error."""
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime", reason="pip install -r requirements-onnx.txt")
pytest.importorskip("onnxscript", reason="pip install -r requirements-onnx.txt")

from helpers import oriented_copies, write_tiny_checkpoint

import predict
from inference import SegVGPredictor
from inference.onnx_runtime import OnnxModelError, OnnxRuntimeModel
from tools import export_onnx


@pytest.fixture(scope="module")
def exported(tiny_onnx):
    return tiny_onnx


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("photos")
    for k, (h, w) in enumerate([(90, 150), (64, 64), (120, 40)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


def test_export_writes_metadata_and_checks_against_pytorch(exported, capsys):
    import onnx

    _, path = exported
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["segvg_imsize"] == "64" and meta["segvg_max_query_len"] == "8"
    assert json.loads(meta["segvg_config"])["dataset"] == "demo" and meta["segvg_vocab"].split("\n")[0] == "[PAD]"
    assert [i.name for i in proto.graph.input] == ["image", "image_mask", "text_ids", "text_mask", "image_index"]
    images_dim, batch_dim = (proto.graph.input[k].type.tensor_type.shape.dim[0] for k in (0, 2))
    assert images_dim.dim_param and batch_dim.dim_param and images_dim.dim_param != batch_dim.dim_param  # dynamic


def test_onnxruntime_matches_pytorch_within_tolerance(exported):
    from inference.fast_path import prepare_for_inference
    from inference.onnx_export import compare_with_onnxruntime
    from models.pretrained import load_from_checkpoint

    checkpoint, path = exported
    model, tokenizer, args, _ = load_from_checkpoint(checkpoint)
    worst = compare_with_onnxruntime(prepare_for_inference(model, channels_last=False), args, tokenizer, path,
                                     batches=(1, 2, 5))
    assert worst["boxes"] <= export_onnx.BOX_TOLERANCE and worst["probabilities"] <= export_onnx.PROBABILITY_TOLERANCE
    assert worst["boxes"] > 0 or worst["probabilities"] > 0  # two runtimes really ran


@pytest.mark.slow
def test_opset_23_exports_onnx_attention_that_onnxruntime_runs(exported, tmp_path, capsys):
    """Opset 23 turns every attention into one Attention node; ONNX Runtime runs them (the masks it cannot broadcast
    are expanded at export) within the tolerances."""
    import onnx

    checkpoint, _ = exported
    path = tmp_path / "segvg23.onnx"
    assert export_onnx.main(["--checkpoint", str(checkpoint), "--out", str(path), "--opset", "23"]) == 0
    assert "passed" in capsys.readouterr().out
    types = [node.op_type for node in onnx.load(str(path)).graph.node]
    # 4 BERT layers, 2 visual encoder layers, 2 + 3 x 2 vision-language layers, the triple alignment's stages
    assert types.count("Attention") >= 14 and "Softmax" not in types


def test_a_different_model_fails_the_comparison(exported, tmp_path):
    """The comparison can fail: the export of another model's weights does not match this one."""
    from inference.fast_path import prepare_for_inference
    from inference.onnx_export import compare_with_onnxruntime
    from models.pretrained import load_from_checkpoint

    _, path = exported
    other = write_tiny_checkpoint(tmp_path / "other.pth", seed=1)
    model, tokenizer, args, _ = load_from_checkpoint(other)
    worst = compare_with_onnxruntime(prepare_for_inference(model, channels_last=False), args, tokenizer, path)
    assert worst["boxes"] > export_onnx.BOX_TOLERANCE


@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_predict_records_equal_across_backends(exported, photos, tmp_path, with_checkpoint, capsys):
    checkpoint, path = exported
    # The second phrase is longer than the text length: it is cut alike.
    common = ["--images", str(photos), "--phrase", "the red circle", "--phrase",
              "the object on the left of the big blue square", "--json"]
    torch_results = predict.main(["--checkpoint", str(checkpoint), *common])
    onnx_args = ["--backend", "onnxruntime", "--onnx", str(path)] + (["--checkpoint", str(checkpoint)]
                                                                      if with_checkpoint else [])
    onnx_results = predict.main([*onnx_args, *common])
    assert len(torch_results) == len(onnx_results) == 6
    for a, b in zip(torch_results, onnx_results):
        assert a["phrase"] == b["phrase"] and a["image_size"] == b["image_size"]
        assert np.abs(np.subtract(a["box"], b["box"])).max() <= 0.011  # records round to 0.01 pixel
        assert np.abs(a["mask"] - b["mask"]).max() <= export_onnx.PROBABILITY_TOLERANCE
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 12 and records[0].keys() == records[6].keys()


def test_missing_or_corrupt_onnx_is_one_clear_error(exported, tmp_path):
    checkpoint, _ = exported
    with pytest.raises(OnnxModelError, match="not found: export one with"):
        SegVGPredictor.from_onnx(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(OnnxModelError, match="cannot load ONNX model .*corrupt.onnx"):
        SegVGPredictor.from_onnx(corrupt, checkpoint)


def test_cli_asks_for_the_onnx_file(capsys):
    for argv in (["--backend", "onnxruntime"], ["--onnx", "segvg.onnx", "--checkpoint", "c.pth"], []):
        with pytest.raises(SystemExit):
            predict.main([*argv, "--image", "x.png", "--phrase", "a"])
        assert "--onnx" in capsys.readouterr().err or "--checkpoint" in capsys.readouterr().err


def test_app_serves_the_onnx_backend(exported, photos):
    import app

    checkpoint, path = exported
    predictor = app.build_predictor(app.get_args_parser().parse_args(["--backend", "onnxruntime", "--onnx", str(path)]))
    assert isinstance(predictor.model, OnnxRuntimeModel)
    reference = SegVGPredictor.from_checkpoint(checkpoint, "cpu")
    image = str(photos / "0.png")
    got, expected = predictor(image, "the red circle")["box"], reference(image, "the red circle")["box"]
    assert np.abs(np.subtract(got, expected)).max() <= 0.011
    with pytest.raises(ValueError, match="needs --onnx"):
        app.build_predictor(app.get_args_parser().parse_args(["--backend", "onnxruntime"]))


def test_the_onnxruntime_backend_reads_phone_photos_upright(exported, tmp_path, capsys):
    """Each of the 8 EXIF orientation tags gives the upright photo's box and image_size, as with PyTorch."""
    checkpoint, path = exported
    photos = oriented_copies(np.random.default_rng(2).integers(0, 255, (88, 96, 3), dtype=np.uint8), tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(photos[k]), "phrase": "the red circle"}) + "\n"
                             for k in ["upright", *range(1, 9)]))
    upright, *tagged = predict.main(["--backend", "onnxruntime", "--onnx", str(path), "--pairs", str(pairs), "--json"])
    for orientation, result in enumerate(tagged, 1):
        assert result["box"] == pytest.approx(upright["box"], abs=1) and result["image_size"] == [96, 88]
        assert result.get("exif_orientation", 1) == orientation
    stored = predict.main(["--backend", "onnxruntime", "--onnx", str(path), "--pairs", str(pairs), "--exif", "ignore"])
    assert [r["image_size"] for r in stored[1:]] == [[96, 88]] * 4 + [[88, 96]] * 4
    capsys.readouterr()
