"""Int8 versions of an export (tools/quantize_onnx.py) on a small model and a small demo dataset: static quantisation
really puts the convolutions and matrix products in int8 with ranges from the calibration samples, the result loads
and predicts like any export, and bad input is one clear error."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="pip install -r requirements-onnx.txt")
pytest.importorskip("onnxscript", reason="pip install -r requirements-onnx.txt")

from helpers import make_demo, noise_image

from inference import SegVGPredictor
from inference.onnx_export import example_inputs
from inference.onnx_quantize import spread_indices
from inference.onnx_runtime import INPUT_NAMES, OnnxModelError, OnnxRuntimeModel, run_feed
from tools import quantize_onnx


@pytest.fixture(scope="module")
def exported(tiny_onnx, tmp_path_factory):
    checkpoint, path = tiny_onnx
    demo = make_demo(tmp_path_factory, seed=3, train=12, holdout=2)
    data = ["--data_root", str(demo), "--split_root", str(demo / "split")]
    return checkpoint, path, data


def quantize(exported, out, *flags):
    checkpoint, path, data = exported
    return quantize_onnx.main(["--onnx", str(path), "--checkpoint", str(checkpoint), "--out", str(out), *data,
                               *[str(f) for f in flags]])


def node_types(path):
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_spread_indices_cover_the_split_and_avoid_the_excluded():
    calibration = spread_indices(100, 10)
    assert calibration == list(range(0, 100, 10))
    check = spread_indices(100, 30, exclude=calibration)
    assert len(check) == 30 and not set(check) & set(calibration) and check == sorted(set(check))
    assert spread_indices(5, 64) == [0, 1, 2, 3, 4]


def test_static_int8_quantizes_convolutions_and_matrix_products(exported, tmp_path, capsys):
    import onnx

    _, path, _ = exported
    out = tmp_path / "segvg.int8.onnx"
    assert quantize(exported, out, "--calibration_samples", 6, "--check_samples", 4) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 6 samples of demo train" in printed and "int8 vs float boxes on 4 other samples" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segvg.int8.onnx"]  # no temporary file left behind

    graph = onnx.load(str(out)).graph
    produced_by = {output: node.op_type for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == node_types(path).count("Conv") > 20
    # QDQ: every convolution reads an int8 weight and a quantised activation, each through DequantizeLinear.
    assert all(produced_by.get(node.input[0]) == produced_by.get(node.input[1]) == "DequantizeLinear"
               for node in convs)
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    assert sum(produced_by.get(node.input[1]) == "DequantizeLinear" for node in matmuls) > len(matmuls) // 2

    float_model, int8_model = OnnxRuntimeModel(path), OnnxRuntimeModel(out)
    assert int8_model.config == float_model.config and int8_model.vocab == float_model.vocab  # metadata kept
    assert float_model.quantization is None and int8_model.quantization.startswith("static int8")
    with pytest.raises(ValueError, match="segvg.int8.onnx is already quantised .static int8"):
        quantize(exported, tmp_path / "twice.onnx", "--onnx", out)  # the later --onnx wins
    predictor = SegVGPredictor.from_onnx(path)
    inputs = example_inputs(predictor.args, predictor.tokenizer, ["the red circle", "a", "the big blue square"])
    feed = dict(zip(INPUT_NAMES, inputs))
    got, expected = run_feed(int8_model, feed)["pred_boxes"], run_feed(float_model, feed)["pred_boxes"]
    difference = (got - expected).abs().max().item()
    assert 0 < difference < 0.1  # a different, int8 network ran, and it stays near the float one


def test_calibration_data_set_the_ranges(exported, tmp_path, capsys):
    """Different calibration samples give different activation ranges (the quantisation scales)."""
    import onnx
    from onnx import numpy_helper

    def scales(out):
        graph = onnx.load(str(out)).graph
        return {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.name.endswith("_scale")}

    quantize(exported, tmp_path / "one.onnx", "--calibration_samples", 1, "--check_samples", 0)
    quantize(exported, tmp_path / "all.onnx", "--calibration_samples", 12)
    assert "no samples of train left to compare" in capsys.readouterr().out  # all 12 calibrate
    one, every = scales(tmp_path / "one.onnx"), scales(tmp_path / "all.onnx")
    assert one.keys() == every.keys()
    assert any(not np.array_equal(one[name], every[name]) for name in one)


def test_dynamic_int8_needs_no_data_and_predicts(exported, tmp_path):
    checkpoint, path, _ = exported
    out = tmp_path / "segvg.dynamic.onnx"
    assert quantize_onnx.main(["--onnx", str(path), "--checkpoint", str(checkpoint), "--out", str(out), "--method",
                               "dynamic", "--check_samples", "0", "--data_root", str(tmp_path / "absent")]) == 0
    types = node_types(out)
    assert "MatMulInteger" in types and "DynamicQuantizeLinear" in types and "ConvInteger" not in types
    record = SegVGPredictor.from_onnx(out, checkpoint)(noise_image(tmp_path / "photo.png"), "the red circle")
    x1, y1, x2, y2 = record["box"]
    assert 0 <= x1 <= x2 <= 150 and 0 <= y1 <= y2 <= 90 and 0 <= record["score"] <= 1


def test_bad_input_is_one_clear_error(exported, tmp_path):
    checkpoint, path, data = exported
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model" * 50)
    with pytest.raises(OnnxModelError, match="cannot load ONNX model .*corrupt.onnx"):
        quantize_onnx.main(["--onnx", str(corrupt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o.onnx"),
                            *data])
    with pytest.raises(ValueError, match="dataset 'demo' has no split 'testB'"):
        quantize(exported, tmp_path / "o.onnx", "--calibration_split", "testB")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="index folder .*empty.demo not found. Generate it with"):
        quantize(exported, tmp_path / "o.onnx", "--split_root", empty)  # the later --split_root wins
    with pytest.raises(ValueError, match="--calibration_samples must be at least 1"):
        quantize(exported, tmp_path / "o.onnx", "--calibration_samples", 0)
    assert not (tmp_path / "o.onnx").exists()
