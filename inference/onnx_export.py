"""The inference graph as ONNX (tools/export_onnx.py): images, their padding masks, token ids, attention masks and
each expression's image index in; the box and the evaluation segmentation logits out (and the grid head's map beside a
fine head's, and a presence head's logit, where the model has them). The configuration and the vocabulary go into the
file's metadata, so that inference.onnx_runtime needs nothing else (docs/onnx.md)."""
import json
import logging
import warnings

import torch
from torch import nn

from datasets.tokenizer import encode_text
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from evaluation.presence import GRID_MAP
from models.checkpoint import json_config
from utils.files import atomic_write

from .onnx_runtime import INPUT_NAMES, OUTPUT_NAMES, PRESENCE_OUTPUT, OnnxRuntimeModel

DEFAULT_OPSET = 18


def graph_outputs(model):
    """The export's outputs: pred_boxes [B, 4] (cx, cy, w, h on the canvas) and seg_logits [B, h, w]; with a fine
    head grid_seg_logits [B, g, g] (mask presence reads both maps); with a presence head presence_logits [B]."""
    return (OUTPUT_NAMES + ([GRID_MAP] if getattr(model, "mask_head", None) is not None else [])
            + ([PRESENCE_OUTPUT] if getattr(model, "presence_head", None) is not None else []))


class InferenceGraph(nn.Module):
    """The model with plain tensor inputs and a tuple out (graph_outputs' order): what the exporter traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.names = graph_outputs(model)

    def forward(self, image, image_mask, text_ids, text_mask, image_index):
        out = self.model(image, image_mask, text_ids, text_mask, aux=False, image_index=image_index)
        return tuple(out[name] for name in self.names)


def example_inputs(args, tokenizer, phrases, seed=0, image_index=None):
    """A batch of len(phrases) on max(image_index) + 1 images (default: one each): random image content on the canvas
    (the first image pasted smaller, so that its padding mask marks a border), the phrases tokenized as the predictor
    does (an empty phrase is [CLS] [SEP]). -> the graph's inputs, in INPUT_NAMES' order."""
    g = torch.Generator().manual_seed(seed)
    image_index = torch.arange(len(phrases)) if image_index is None else torch.as_tensor(image_index)
    size, images = args.imsize, int(image_index.max()) + 1
    image = torch.randn(images, 3, size, size, generator=g)
    image_mask = torch.zeros(images, size, size, dtype=torch.bool)
    image[0, :, size * 3 // 4:] = 0
    image_mask[0, size * 3 // 4:] = True
    encoded = [encode_text(tokenizer, phrase.lower(), args.max_query_len) for phrase in phrases]
    text_ids = torch.tensor([ids for ids, _ in encoded])
    text_mask = torch.tensor([mask for _, mask in encoded])
    return image, image_mask, text_ids, text_mask, image_index


def metadata(args, tokenizer, presence_thresholds=None):
    """Everything a consumer needs besides the graph: sizes, normalisation, the configuration and vocabulary, and the
    presence thresholds chosen on validation (evaluation.presence) where the checkpoint has them."""
    vocab = tokenizer.get_vocab()
    extra = {"segvg_presence_thresholds": json.dumps(presence_thresholds)} if presence_thresholds else {}
    return {**extra, "segvg_imsize": str(args.imsize), "segvg_max_query_len": str(args.max_query_len),
            "segvg_mean": json.dumps(list(IMAGENET_MEAN)), "segvg_std": json.dumps(list(IMAGENET_STD)),
            "segvg_tokenizer": args.vocab_file or args.bert_model, "segvg_lower_case": "true",
            "segvg_boxes": "sigmoid cx, cy, w, h on the imsize x imsize canvas",
            "segvg_config": json.dumps(json_config(args)),
            "segvg_vocab": "\n".join(sorted(vocab, key=vocab.get))}


def export_onnx(model, args, tokenizer, path, opset=DEFAULT_OPSET, batch="dynamic"):
    """Writes the inference graph of model (already prepared for inference) to path; batch "dynamic" or a size."""
    import onnx

    fixed = None if batch == "dynamic" else int(batch)
    if fixed is None:  # three phrases on two images: neither count is 1, which the exporter would fix
        inputs = example_inputs(args, tokenizer, ["a", "the object on the left", "a"], image_index=[0, 1, 1])
        images, phrases = torch.export.Dim("images", min=1, max=1024), torch.export.Dim("batch", min=1, max=1024)
        dynamic_shapes = ({0: images}, {0: images}, {0: phrases}, {0: phrases}, {0: phrases})
    else:  # a fixed batch of one image per expression
        inputs, dynamic_shapes = example_inputs(args, tokenizer, ["a"] * fixed), None
    graph = InferenceGraph(model).eval()
    # The exporter's optimiser logs every constant it leaves unfolded; only its errors are worth printing.
    quiet = logging.getLogger("onnxscript")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            program = torch.onnx.export(graph, inputs, dynamo=True, opset_version=opset, input_names=INPUT_NAMES,
                                        output_names=graph.names, dynamic_shapes=dynamic_shapes,
                                        external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    for key, value in metadata(args, tokenizer, getattr(model, "presence_thresholds", None)).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return path


def parity_phrases(args):
    """The phrases the export is checked on: an empty one, a typical one, and one that fills the text length."""
    return ["", "the object on the left", " ".join(["red"] * args.max_query_len)]


@torch.no_grad()
def compare_with_onnxruntime(model, args, tokenizer, path, batches=(1, 3), seed=1):
    """ONNX Runtime vs model (the same prepared model that was exported, one image per expression) on generated
    batches, each also with its phrases grouped two per image where the export takes that. Returns the largest
    absolute differences: "boxes" (canvas units, 0-1) and "probabilities" (of the segmentation maps), and "presence"
    (its probability) for a model with a presence head."""
    network = OnnxRuntimeModel(path)
    phrases = parity_phrases(args)
    worst = {"boxes": 0.0, "probabilities": 0.0}
    cases = [(batch, torch.arange(batch)) for batch in batches]
    cases += [(batch, torch.arange(batch) // 2) for batch in batches if batch > 1 and network.grouped]
    for batch, image_index in cases:
        inputs = example_inputs(args, tokenizer, [phrases[k % len(phrases)] for k in range(batch)], seed + batch,
                                image_index)
        image, image_mask, text_ids, text_mask, _ = inputs
        expected = model(image[image_index], image_mask[image_index], text_ids, text_mask, aux=False)
        got = network(image, image_mask, text_ids, text_mask, image_index=image_index)
        worst["boxes"] = max(worst["boxes"], (got["pred_boxes"] - expected["pred_boxes"]).abs().max().item())
        for name in ("seg_logits", GRID_MAP):
            if name in got:
                prob = (got[name].sigmoid() - expected[name].sigmoid()).abs().max().item()
                worst["probabilities"] = max(worst["probabilities"], prob)
        if PRESENCE_OUTPUT in expected:
            presence = (got[PRESENCE_OUTPUT].sigmoid() - expected[PRESENCE_OUTPUT].sigmoid()).abs().max().item()
            worst["presence"] = max(worst.get("presence", 0.0), presence)
    return worst
