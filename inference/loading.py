"""A model, its configuration and its tokenizer from any checkpoint: ours (configuration and vocabulary inside) or
an official SegVG one (its argparse Namespace, its weights renamed through the official key map)."""
import argparse
import tempfile
from pathlib import Path

from datasets.tokenizer import build_tokenizer
from utils.checkpoint import is_official_state_dict, load_official_checkpoint, load_state_dict_checked, safe_load
from utils.options import model_flags, training_defaults

from models import build_model

# Settings of the run that trained, never taken from a checkpoint: the run that loads it has its own.
RUN_KEYS = {"output_dir", "device", "batch_size", "num_workers", "resume", "auto_resume", "dist_url", "tensorboard",
            "seed", "amp", "deterministic", "rank", "world_size", "gpu", "distributed", "channels_last",
            "checkpoint_activations", "compile", "tf32"}
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


def load_from_checkpoint(path, overrides=None):
    """-> (model on the CPU, tokenizer, configuration, whether the file is an official checkpoint)."""
    checkpoint = safe_load(path)
    args, official = resolve_config(checkpoint, overrides)
    tokenizer = tokenizer_from_checkpoint(checkpoint, args, overrides or {})
    model = load_model(args, checkpoint, official, f"checkpoint {path}")
    return model, tokenizer, args, official
