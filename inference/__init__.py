"""Serving a trained SegVG: loading a checkpoint (ours or official), the inference fast path, the predictor, the ONNX
export, its ONNX Runtime backend and int8 versions, and the browser demo's requests and page (docs/model.md)."""
from .predictor import SegVGPredictor, load_rgb

__all__ = ["SegVGPredictor", "load_rgb"]
