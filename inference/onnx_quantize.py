"""Int8 versions of an export (tools/quantize_onnx.py, docs/onnx.md): ONNX Runtime's static quantisation of the
convolutions and matrix products, calibrated on real samples, or its dynamic quantisation of the matrix products."""
import logging
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from evaluation.box_metrics import prediction_ious
from utils.files import atomic_write

from .onnx_runtime import INPUT_NAMES, QUANTIZATION_KEY, OnnxModelError, require_onnxruntime, run_feed

STATIC_OPS = ["Conv", "MatMul"]
# ORT's dynamically quantised convolutions (ConvInteger) are slower than its float ones on CPU: matrix products only.
DYNAMIC_OPS = ["MatMul", "Gemm"]


def spread_indices(length, count, exclude=()):
    """count indices spread evenly over range(length) minus exclude (all of them when there are fewer)."""
    exclude = set(exclude)
    candidates = [index for index in range(length) if index not in exclude]
    count = min(count, len(candidates))
    return [candidates[k * len(candidates) // count] for k in range(count)]


def sample_feeds(dataset, indices):
    """Dataset samples (eval transform) -> the export's inputs, one sample each, as numpy arrays."""
    for index in indices:
        sample = dataset[index]
        yield {name: tensor[None].numpy() for name, tensor in zip(
            INPUT_NAMES, (sample["img"].float(), sample["img_mask"].bool(), sample["text_ids"].long(),
                          sample["text_mask"].long(), torch.tensor(0)))}


def _write_through_temporary(out, quantize, description):
    """quantize(path) writes a model to path; it lands at out atomically (a crash never leaves half a file there),
    with description in its metadata ("segvg_quantization": no quantising twice)."""
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder) / "model.onnx"
        # ORT's quantizer advises its shape-inference pre-processing on every call; it made no difference here.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize(str(tmp))
        except OSError as err:  # a full or read-only temporary folder
            raise OnnxModelError(f"cannot quantise into {folder}: {err}; set TMPDIR to a folder with room") from None
        finally:
            root.setLevel(level)
        proto = onnx.load(str(tmp))
    proto.metadata_props.add(key=QUANTIZATION_KEY, value=description)
    atomic_write(out, lambda f: f.write(proto.SerializeToString()))
    return out


def quantize_static_int8(src, out, calibration_feeds, total=None):
    """Static int8 (QDQ, per-channel int8 weights, uint8 activations with ranges from calibration_feeds, an iterable
    of total input dicts: MinMax over all of them) of the convolutions and matrix products of src; written to out."""
    require_onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(tqdm(calibration_feeds, desc="Calibrating", total=total, unit="sample",
                                   dynamic_ncols=True))

        def get_next(self):
            return next(self.feeds, None)

    return _write_through_temporary(out, lambda path: quantize_static(
        str(src), path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, op_types_to_quantize=STATIC_OPS),
        "static int8 (QDQ): convolutions, matrix products")


def quantize_dynamic_int8(src, out):
    """Dynamic int8 of the matrix products of src (weights int8, activations quantised per call): no data needed."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _write_through_temporary(out, lambda path: quantize_dynamic(
        str(src), path, weight_type=QuantType.QInt8, op_types_to_quantize=DYNAMIC_OPS), "dynamic int8: matrix products")


@torch.no_grad()
def box_agreement(reference, candidate, feeds):
    """IoU of candidate's boxes with reference's (two OnnxRuntimeModel) on each input dict of feeds -> tensor."""
    ious = []
    for feed in feeds:
        ious.append(prediction_ious(run_feed(candidate, feed)["pred_boxes"], run_feed(reference, feed)["pred_boxes"]))
    return torch.cat(ious)
