"""Reading a checkpoint, the whole story in one place: the safe load with one-line errors, the key maps of official
SegVG and DETR checkpoints, the configuration (ours inside the file, or an official argparse Namespace), the tokenizer
and the model with its weights. Training (--resume, --pretrained, --detr_model) and inference (eval.py, predict.py,
SegVGPredictor, the ONNX tools) read checkpoints through it."""
import argparse
import json
import pickle
import re
import tempfile
from pathlib import Path

import torch

from datasets.tokenizer import build_tokenizer
from models import build_model
from utils.files import first_line
from utils.options import model_flags, training_defaults

# Official SegVG key prefixes and ours; {i} is a layer index, {x} one of q/k/v. First match wins.
OFFICIAL_KEY_MAP = [
    ("visumodel.backbone.0.body.", "visual.backbone.body."),
    ("visumodel.input_proj.", "visual.input_proj."),
    ("visumodel.transformer.encoder.layers.", "visual.layers."),
    ("textmodel.", "text.bert."),
    ("deepfuse.layers.{i}.norm_o.", "triple_alignment.{i}.queries.norm."),
    ("deepfuse.layers.{i}.norm_t.", "triple_alignment.{i}.text.norm."),
    ("deepfuse.layers.{i}.norm_v.", "triple_alignment.{i}.visual.norm."),
    ("deepfuse.layers.{i}.in_object_{x}.", "triple_alignment.{i}.queries.to_{x}."),
    ("deepfuse.layers.{i}.in_text_{x}.", "triple_alignment.{i}.text.to_{x}."),
    ("deepfuse.layers.{i}.in_visual_{x}.", "triple_alignment.{i}.visual.to_{x}."),
    ("deepfuse.layers.{i}.out_object.", "triple_alignment.{i}.queries.out."),
    ("deepfuse.layers.{i}.out_text.", "triple_alignment.{i}.text.out."),
    ("deepfuse.layers.{i}.out_visual.", "triple_alignment.{i}.visual.out."),
    ("reg_seg_src.", "query_content."),
    ("reg_seg_pos.", "query_pos."),
    ("visu_proj.", "visual_proj."),
    ("text_proj.", "text_proj."),
    ("object_proj.", "query_proj."),
    ("vl_pos_embed.", "vl_pos_embed."),
    ("vl_transformer.encoder.", "vl_encoder."),
    ("vl_decoder.decoder.layers.{i}.multihead_attn.", "decoder.layers.{i}.cross_attn."),
    ("vl_decoder.decoder.", "decoder."),
    ("bbox_embed.", "box_head."),
    ("seg_embed.", "seg_head."),
]
# Saved by older transformers versions: a constant buffer, not a weight.
IGNORED_OFFICIAL_KEYS = {"textmodel.embeddings.position_ids"}
PLACEHOLDERS = {"i": r"\d+", "x": "[qkv]"}


def _prefix_regex(template):
    parts = re.split(r"\{(\w)\}", template)  # literal, name, literal, name, ...
    regex = "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{PLACEHOLDERS[p]})" for n, p in enumerate(parts))
    return re.compile("^" + regex)


def _rename(key, pairs):
    for source, target in pairs:
        match = _prefix_regex(source).match(key)
        if match:
            return target.format(**match.groupdict()) + key[match.end():]
    return None


def official_to_ours(key):
    new = _rename(key, OFFICIAL_KEY_MAP)
    if new is None:
        raise KeyError(f"official checkpoint key {key!r} has no counterpart in this implementation")
    return new


def ours_to_official(key):
    new = _rename(key, [(ours, official) for official, ours in OFFICIAL_KEY_MAP])
    if new is None:
        raise KeyError(f"key {key!r} has no counterpart in the official checkpoint layout")
    return new


def json_config(args):
    """vars(args) with only JSON types, so the checkpoint loads with weights_only=True."""
    return json.loads(json.dumps(vars(args), default=str))


def tokenizer_info(tokenizer, args):
    """The vocabulary itself (ordered by id), so a checkpoint rebuilds its tokenizer with no hub or file."""
    vocab = tokenizer.get_vocab()
    return {"vocab": sorted(vocab, key=vocab.get), "do_lower_case": True,
            "source": args.vocab_file or (args.bert_model if args.dataset != "demo" else "datasets/demo_vocab.txt")}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, is refused, does not fit the model, or cannot be written; the message is
    one line naming the file and what is wrong."""


def safe_load(path, mmap=False):
    """``torch.load`` with ``weights_only=True``; the original's pickled ``argparse.Namespace`` is allowed. mmap: the
    tensors mapped from the file, not read (for what a checkpoint says besides its weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" not in text:
            raise CheckpointError(f"{path} is truncated or corrupt: {first_line(text)}") from None
        found = re.search(r"(?:unsupported|Unsupported global:) (GLOBAL [\w.]+)|Unsupported operand \S+", text)
        detail = (found.group(1) or found.group(0)) if found else "an object weights_only refuses"
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain data ({detail}); refusing "
                              f"to load it, it could run code") from None
    except Exception as err:  # the zip reader and the unpickler fail in many ways on a damaged file
        detail = first_line(str(err)) if isinstance(err, RuntimeError) else f"{type(err).__name__} {err}"
        raise CheckpointError(f"{path} is truncated or corrupt: {detail}; write it again or use another "
                              f"checkpoint") from None


def is_official_state_dict(state_dict):
    return any(k.removeprefix("module.").startswith(("visumodel.", "deepfuse.")) for k in state_dict)


def convert_official_state_dict(state_dict):
    """Official SegVG ``model`` state_dict (``module.`` prefix allowed) -> this implementation's names."""
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key not in IGNORED_OFFICIAL_KEYS:
            converted[official_to_ours(key)] = value
    return converted


def load_state_dict_checked(model, state_dict, source="checkpoint", describe=lambda k: k, fresh=()):
    """Strict load whose errors name every missing, unexpected or mis-shaped key. fresh: prefixes of the model's
    keys that may be missing (modules the checkpoint never had, which keep their initialisation)."""
    fresh = tuple(fresh)
    # A prefix is fresh only when the checkpoint has none of its keys (one it has is loaded and checked as usual).
    absent = tuple(p for p in fresh if not any(k.startswith(p) for k in state_dict))
    expected = {k: v for k, v in model.state_dict().items() if not (absent and k.startswith(absent))}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{describe(k)}: {source} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from {source}: " + listing([describe(k) for k in missing]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected in {source}: " + listing([describe(k) for k in unexpected]))
    if shapes:
        problems.append(f"shape mismatch for {len(shapes)}: " + listing(shapes, "; "))
    if problems:
        raise CheckpointError(f"{source} does not fit this model configuration ({' | '.join(problems)}); was it "
                              f"trained with other model flags (--backbone, --imsize, --max_query_len, widths or "
                              f"depths)?")
    model.load_state_dict(state_dict, strict=len(expected) == len(model.state_dict()))


def listing(items, sep=", ", limit=5):
    return sep.join(items[:limit]) + (f"{sep}... ({len(items) - limit} more)" if len(items) > limit else "")


def load_official_checkpoint(model, checkpoint, fresh=()):
    """Load an official SegVG checkpoint (a path or its loaded dict) strictly (but for the `fresh` prefixes, as
    load_state_dict_checked); returns the file's dict."""
    if not isinstance(checkpoint, dict):
        checkpoint = safe_load(checkpoint)
    state_dict = checkpoint.get("model", checkpoint)
    load_state_dict_checked(model, convert_official_state_dict(state_dict), "official checkpoint",
                            describe=lambda k: f"{ours_to_official(k)} (ours: {k})", fresh=fresh)
    return checkpoint


def load_detr_weights(model, path):
    """Initialise the visual branch from a DETR checkpoint; returns (used DETR keys, ignored DETR keys).

    DETR's backbone, input_proj and the first encoder layers are used; its decoder and heads are not.
    """
    detr = safe_load(path)
    detr = detr.get("model", detr)
    ours = model.state_dict()
    used, ignored, update = [], [], {}
    for key, value in detr.items():
        target = _rename("visumodel." + key, OFFICIAL_KEY_MAP)
        if target is None or target not in ours or not target.startswith("visual."):
            ignored.append(key)
            continue
        if value.shape != ours[target].shape:
            raise CheckpointError(f"DETR checkpoint {path}, key {key}: checkpoint {tuple(value.shape)} vs model "
                                  f"{tuple(ours[target].shape)} ({target}); is --backbone right?")
        update[target] = value
        used.append(key)
    expected = [k for k in ours if k.startswith(("visual.backbone.", "visual.input_proj.", "visual.layers."))]
    not_found = [k for k in expected if k not in update]
    if not_found:
        raise CheckpointError(f"DETR checkpoint {path} lacks weights for: {', '.join(not_found[:10])}"
                           + (f" and {len(not_found) - 10} more" if len(not_found) > 10 else ""))
    model.load_state_dict(update, strict=False)
    return used, ignored


# Settings of the run that trained, never taken from a checkpoint: the run that loads it has its own.
RUN_KEYS = {"output_dir", "device", "batch_size", "num_workers", "resume", "auto_resume", "dist_url", "dist_timeout",
            "tensorboard", "seed", "amp", "deterministic", "rank", "world_size", "gpu", "distributed", "channels_last",
            "checkpoint_activations", "compile", "tf32", "index_cache"}
# An official checkpoint's paths are its authors' machine; its data flags are not ours either.
OFFICIAL_SKIP = RUN_KEYS | {"data_root", "split_root", "detr_model", "bert_model", "vocab_file"}


def tokenizer_overrides(bert_model=None, vocab_file=None):
    """The --bert_model / --vocab_file given, as resolve_config overrides."""
    return {key: value for key, value in (("bert_model", bert_model), ("vocab_file", vocab_file)) if value}


def resolve_config(checkpoint, overrides=None):
    """The training defaults <- the checkpoint's configuration <- overrides ({flag: value}, e.g. the --data_root of
    a command line). Returns (args, official)."""
    args = training_defaults()
    state_dict = checkpoint.get("model", checkpoint)
    official = is_official_state_dict(state_dict)
    saved = checkpoint.get("args", {})
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else dict(saved)
    skip = OFFICIAL_SKIP if official else RUN_KEYS
    for key, value in saved.items():
        if hasattr(args, key) and key not in skip:
            setattr(args, key, value)
    for key, value in (overrides or {}).items():
        if not hasattr(args, key):
            raise ValueError(f"{key!r} is not a configuration flag")
        setattr(args, key, value)
    # The weights come from the checkpoint: build BERT's structure only, with no download.
    args.bert_init = "random"
    return args, official


def apply_pretrained_config(args, checkpoint, explicit=()):
    """--pretrained: the checkpoint's model configuration (the model flags) over args, except the flags named in
    explicit (given on the command line). The tokenizer is tokenizer_from_checkpoint's. Returns whether the
    checkpoint is an official one."""
    config, official = resolve_config(checkpoint)
    for key in model_flags() - set(explicit) - {"bert_model", "vocab_file"}:
        setattr(args, key, getattr(config, key))
    return official


def tokenizer_from_checkpoint(checkpoint, args, overrides=()):
    """Our checkpoints carry their vocabulary (unless a vocab_file override is given); official ones use
    --vocab_file or --bert_model's vocabulary (bert-base-uncased's ships with the project)."""
    info = checkpoint.get("tokenizer")
    if not info or "vocab_file" in overrides:
        return build_tokenizer(args)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.txt"
        vocab_file.write_text("\n".join(info["vocab"]) + "\n")
        return build_tokenizer(argparse.Namespace(**{**vars(args), "vocab_file": str(vocab_file)}))


def load_weights(model, checkpoint, official, source="checkpoint", new_mask_head=False):
    """The checkpoint's weights into model, strictly (an error names every key that does not fit). new_mask_head:
    a checkpoint without a fine mask head may initialise a model with one, whose head keeps its initialisation
    (fine-tuning a grid-head checkpoint with --mask_head fine)."""
    fresh = ("mask_head.",) if new_mask_head else ()
    if official:
        load_official_checkpoint(model, checkpoint, fresh)
    else:
        load_state_dict_checked(model, checkpoint["model"], source, fresh=fresh)
    return model


def load_model(args, checkpoint, official, source="checkpoint"):
    """The model of configuration args with the checkpoint's weights."""
    return load_weights(build_model(args), checkpoint, official, source)
