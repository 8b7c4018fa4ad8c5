"""Weights in the Hugging Face Hub's layout, and a checkpoint from anywhere (docs/weights.md).

A folder in the layout holds model.safetensors (the network's weights, under this code's names), config.json (the
model configuration and the tokenizer settings) and vocab.txt (the vocabulary, one token per line, by id), and for
the Hub a README.md model card. Wherever a checkpoint is read, it may be a .pth file, such a folder, or a Hub id
ORG/NAME (or ORG/NAME@revision) downloaded into huggingface_hub's cache, which serves it offline afterwards
(HF_HUB_OFFLINE=1). Every form gives the same checkpoint dict: {"model", "args", "tokenizer", "presence_thresholds"}.
"""
import json
import re
from pathlib import Path

import torch

from utils.files import atomic_write

from .checkpoint import (RUN_KEYS, CheckpointError, json_config, load_model, resolve_config, safe_load,
                         tokenizer_from_checkpoint, tokenizer_info)

WEIGHTS, CONFIG, VOCAB, CARD = "model.safetensors", "config.json", "vocab.txt", "README.md"
FORMAT, FORMAT_VERSION = "segvg", 1
# A Hub id: ORG/NAME with an optional @revision (a branch, tag or commit).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")
# Flags that name places on the machine that wrote the checkpoint: not part of a shared model's configuration.
LOCAL_KEYS = RUN_KEYS | {"data_root", "split_root", "detr_model", "pretrained", "holdout_images"}


def is_hub_id(spec):
    return bool(HUB_ID.match(str(spec))) and not Path(str(spec).split("@")[0]).exists()


def read_checkpoint(spec):
    """The checkpoint dict of a .pth file, a folder in the layout, or a Hub id; one-line errors saying what to do."""
    path = Path(spec)
    if path.is_file():
        return safe_load(path)
    if path.is_dir():
        return read_layout(path)
    if is_hub_id(spec):
        return read_layout(download(str(spec)))
    raise FileNotFoundError(f"checkpoint not found: {spec} (give a .pth file, a folder holding {WEIGHTS} and "
                            f"{CONFIG}, or a Hub id ORG/NAME[@revision])")


def load_from_checkpoint(spec, overrides=None):
    """-> (model on the CPU, tokenizer, configuration, whether the file is an official checkpoint) of a .pth file,
    a folder in the layout or a Hub id (read_checkpoint)."""
    checkpoint = read_checkpoint(spec)
    args, official = resolve_config(checkpoint, overrides)
    tokenizer = tokenizer_from_checkpoint(checkpoint, args, overrides or {})
    model = load_model(args, checkpoint, official, f"checkpoint {spec}")
    model.presence_thresholds = dict(checkpoint.get("presence_thresholds") or {})
    return model, tokenizer, args, official


def download(spec):
    """The local folder of Hub id spec (ORG/NAME[@revision]), from huggingface_hub's cache when it is there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo_id, _, revision = spec.partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None,
                                      allow_patterns=[WEIGHTS, CONFIG, VOCAB, CARD]))
    except RevisionNotFoundError:
        raise CheckpointError(f"Hub model {repo_id} has no revision {revision!r}: give a branch, tag or commit it "
                              f"has") from None
    except GatedRepoError:
        raise CheckpointError(f"Hub model {repo_id} is gated: accept its terms on the Hub and log in "
                              f"(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"Hub model {repo_id} not found (or private: log in with `hf auth login` or set "
                              f"HF_TOKEN); check the id, or give a local file or folder") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(f"Hub model {spec} is not in the local cache and the Hub cannot be reached (offline, "
                              f"or HF_HUB_OFFLINE=1): download it once with a connection, or give a local file or "
                              f"folder") from None
    except (OSError, ValueError) as err:  # network and HTTP errors
        raise CheckpointError(f"cannot download Hub model {spec}: {str(err).splitlines()[0]}") from None


def read_layout(folder):
    """The checkpoint dict of a folder in the layout."""
    folder = Path(folder)
    missing = [name for name in (WEIGHTS, CONFIG, VOCAB) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is not a SegVG weights folder: no {', '.join(missing)} (export one with "
                              f"tools/export_pretrained.py)")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except ValueError as err:
        raise CheckpointError(f"{folder / CONFIG} is not valid JSON ({err})") from None
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG} is not a SegVG configuration (its \"format\" is "
                              f"{config.get('format')!r}); export one with tools/export_pretrained.py")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{folder / WEIGHTS} cannot be read ({err}); download or export it again") from None
    vocab = (folder / VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
    return {"model": state, "args": config["model_config"], "tokenizer": {**config["tokenizer"], "vocab": vocab},
            "presence_thresholds": config.get("presence_thresholds", {})}


def layout_config(args, tokenizer, presence_thresholds):
    """config.json's content: the model configuration (without the writing machine's paths and run settings), the
    tokenizer settings and the presence thresholds chosen on validation."""
    info = tokenizer_info(tokenizer, args)
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "model_config": {k: v for k, v in json_config(args).items() if k not in LOCAL_KEYS},
            "tokenizer": {"vocab_file": VOCAB, "do_lower_case": info["do_lower_case"], "source": info["source"]},
            "presence_thresholds": presence_thresholds or {}}


def write_layout(model, args, tokenizer, folder):
    """model.safetensors, config.json and vocab.txt of a model (loaded with its configuration args) into folder,
    each written atomically."""
    from safetensors.torch import save

    folder = Path(folder)
    # Tensors sharing storage cannot go into a safetensors file as they are: each is written on its own.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    config = layout_config(args, tokenizer, getattr(model, "presence_thresholds", {}))
    vocab = tokenizer_info(tokenizer, args)["vocab"]
    atomic_write(folder / WEIGHTS, lambda f: f.write(save(state, metadata={"format": "pt"})))
    atomic_write(folder / CONFIG, lambda f: f.write(json.dumps(config, indent=1).encode()))
    atomic_write(folder / VOCAB, lambda f: f.write("".join(f"{token}\n" for token in vocab).encode("utf-8")))
    return config


def parameter_count(state_dict):
    return sum(v.numel() for v in state_dict.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
