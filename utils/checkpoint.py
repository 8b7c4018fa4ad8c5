"""Checkpoint I/O: atomic saves, safe loads, and the key maps from official SegVG and DETR checkpoints."""
import argparse
import os
import re
import tempfile
from pathlib import Path

import torch

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


def safe_load(path):
    """``torch.load`` with ``weights_only=True``; the original's pickled ``argparse.Namespace`` is allowed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def atomic_save(obj, path):
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def load_state_dict_checked(model, state_dict, source="checkpoint", describe=lambda k: k):
    """Strict load whose errors name every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{describe(k)}: {source} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing from {source}: " + ", ".join(describe(k) for k in missing))
    if unexpected:
        problems.append(f"unexpected in {source}: " + ", ".join(describe(k) for k in unexpected))
    if shapes:
        problems.append("shape mismatch (was it trained with another --max_query_len, --imsize or "
                        "--backbone?): " + "; ".join(shapes))
    if problems:
        raise RuntimeError(f"cannot load {source} into the model:\n  " + "\n  ".join(problems))
    model.load_state_dict(state_dict)


def load_official_checkpoint(model, checkpoint):
    """Load an official SegVG checkpoint (a path or its loaded dict) strictly; returns the file's dict."""
    if not isinstance(checkpoint, dict):
        checkpoint = safe_load(checkpoint)
    state_dict = checkpoint.get("model", checkpoint)
    load_state_dict_checked(model, convert_official_state_dict(state_dict), "official checkpoint",
                            describe=lambda k: f"{ours_to_official(k)} (ours: {k})")
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
            raise RuntimeError(f"DETR key {key}: checkpoint {tuple(value.shape)} vs model "
                               f"{tuple(ours[target].shape)} ({target}); is --backbone right?")
        update[target] = value
        used.append(key)
    expected = [k for k in ours if k.startswith(("visual.backbone.", "visual.input_proj.", "visual.layers."))]
    not_found = [k for k in expected if k not in update]
    if not_found:
        raise RuntimeError(f"DETR checkpoint {path} lacks weights for: {', '.join(not_found[:10])}"
                           + (f" and {len(not_found) - 10} more" if len(not_found) > 10 else ""))
    model.load_state_dict(update, strict=False)
    return used, ignored
