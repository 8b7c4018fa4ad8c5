"""An exported SegVG (inference.onnx_export) run by ONNX Runtime, called like the PyTorch model, so that
SegVGPredictor swaps only the network call (--backend onnxruntime)."""
import json
from pathlib import Path

import torch

from evaluation.presence import GRID_MAP

# The graph's interface, which inference.onnx_export writes and this module reads. image_index [B] names each
# expression's image among the I images of the call, so that the CNN runs once per image.
INPUT_NAMES = ["image", "image_mask", "text_ids", "text_mask", "image_index"]
OUTPUT_NAMES = ["pred_boxes", "seg_logits"]
PRESENCE_OUTPUT = "presence_logits"  # from a model with a presence head
QUANTIZATION_KEY = "segvg_quantization"  # metadata of an int8 version (inference.onnx_quantize): what was quantised


class OnnxModelError(ValueError):
    """An .onnx file that is missing, unreadable or not a SegVG export; the message says what to do."""


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxModelError("onnxruntime is not installed: pip install -r requirements-onnx.txt") from None
    return onnxruntime


def _session(path, device):
    ort = require_onnxruntime()
    if not path:
        raise OnnxModelError("--backend onnxruntime needs --onnx FILE (tools/export_onnx.py writes one)")
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"ONNX model {path} not found: export one with `python tools/export_onnx.py "
                             f"--checkpoint CKPT --out {path}`")
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the CUDA provider's fall-back notes are not ours to print
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # noqa: BLE001 (ORT raises its own exception types for every kind of bad file)
        raise OnnxModelError(f"cannot load ONNX model {path} ({type(err).__name__}: {str(err)[:300]}); export it "
                             f"again with tools/export_onnx.py") from None


def run_feed(network, feed):
    """network (the model or an OnnxRuntimeModel) on a dict of the graph's inputs (tensors or arrays)."""
    tensors = [torch.as_tensor(feed[name]) for name in INPUT_NAMES]
    return network(*tensors[:4], aux=False, image_index=tensors[4])


class OnnxRuntimeModel:
    """model(image, image_mask, text_ids, text_mask, aux=False, image_index=None) -> {"pred_boxes", "seg_logits"} (and
    "grid_seg_logits" from an export with a fine head, "presence_logits" with a presence head) through ONNX Runtime.
    metadata: the export's configuration ("segvg_config", a dict) and vocabulary ("segvg_vocab", token list)."""

    def __init__(self, path, device="cpu"):
        self.session = _session(path, device)
        self.path = Path(path)
        props = self.session.get_modelmeta().custom_metadata_map
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        # Exports without image_index (older ones) or with a fixed batch take one image per expression.
        self.grouped = names == INPUT_NAMES and not isinstance(inputs[0].shape[0], int)
        if names not in (INPUT_NAMES, INPUT_NAMES[:4]) or "segvg_config" not in props:
            raise OnnxModelError(f"{path} is not a SegVG export (inputs {names}): export it with "
                                 f"tools/export_onnx.py")
        self.config = json.loads(props["segvg_config"])
        self.quantization = props.get(QUANTIZATION_KEY)  # None for a float export
        self.vocab = props["segvg_vocab"].split("\n")
        self.presence_thresholds = json.loads(props.get("segvg_presence_thresholds", "{}"))
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Exports of a fine head made before mask presence read both maps have the fine map alone.
        self.lacks_grid_map = self.config.get("mask_head") == "fine" and GRID_MAP not in self.output_names

    def check_matches(self, args, source):
        """The export must have the image size and text length of args, the configuration of source (a checkpoint):
        its position tables fix both."""
        for key in ("imsize", "max_query_len"):
            if self.config[key] != getattr(args, key):
                raise OnnxModelError(f"{self.path} was exported with {key} {self.config[key]}, but {source} has "
                                     f"{getattr(args, key)}: export {source} again")

    def eval(self):
        return self

    def to(self, device):
        return self

    def __call__(self, image, image_mask, text_ids, text_mask, aux=False, image_index=None):
        """As the model's forward: image_index [B] picks each expression's image among image [I] (None: I = B)."""
        if image_index is None:
            image_index = torch.arange(text_ids.shape[0])
        if not self.grouped:
            image, image_mask = image[image_index], image_mask[image_index]
            image_index = torch.arange(text_ids.shape[0])
        tensors = (image.float(), image_mask.bool(), text_ids.long(), text_mask.long(), image_index.long())
        feeds = {name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, tensors)}
        if not self.grouped and len(self.session.get_inputs()) == 4:
            feeds.pop("image_index")
        outputs = self.session.run(None, feeds)
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)}
