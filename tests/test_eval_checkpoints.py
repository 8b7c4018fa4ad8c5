"""inference.loading rebuilds a model from a checkpoint alone: ours (config + vocabulary inside) or an official one (its
argparse Namespace merged over the defaults, overrides such as eval.py's data flags winning)."""
import argparse

import torch
from helpers import synthetic_batch, tiny_train_args

from datasets.tokenizer import DEMO_VOCAB
from models import build_model
from models.checkpoint import (json_config, load_model, ours_to_official, resolve_config, safe_load,
                               tokenizer_from_checkpoint, tokenizer_info)
from models.pretrained import load_from_checkpoint

TRAINED_ARGS = ["--imsize", "96", "--max_query_len", "10", "--enc_layers", "4", "--bert_vocab_size", "119"]


def predictions(model, args):
    batch = synthetic_batch(args, 2, seed=3)
    with torch.no_grad():
        return model.eval()(batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"])["pred_boxes"]


def trained_model():
    args = tiny_train_args(*TRAINED_ARGS, "--dataset", "demo")
    torch.manual_seed(0)
    return build_model(args), args


def test_our_checkpoint_needs_nothing_else(tmp_path):
    model, args = trained_model()
    tokenizer = tokenizer_from_checkpoint({}, args)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "args": json_config(args), "tokenizer": tokenizer_info(tokenizer, args)},
               path)
    checkpoint = safe_load(path)

    fresh, official = resolve_config(checkpoint, {"data_root": "elsewhere"})
    assert not official and (fresh.imsize, fresh.max_query_len, fresh.data_root) == (96, 10, "elsewhere")
    rebuilt = tokenizer_from_checkpoint(checkpoint, fresh)
    assert rebuilt.get_vocab() == tokenizer.get_vocab()
    torch.testing.assert_close(predictions(load_model(fresh, checkpoint, official), fresh), predictions(model, args),
                               rtol=0, atol=0)
    loaded, loaded_tokenizer, loaded_args, _ = load_from_checkpoint(path)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab() and loaded_args.enc_layers == 4
    torch.testing.assert_close(predictions(loaded, loaded_args), predictions(model, args), rtol=0, atol=0)


def test_official_checkpoint_config_from_its_namespace(tmp_path):
    model, args = trained_model()
    # The original saves the training Namespace, with its authors' data paths.
    namespace = argparse.Namespace(**{**vars(args), "data_root": "/home/author/data", "bert_enc_num": 12})
    path = tmp_path / "official.pth"
    torch.save({"model": {"module." + ours_to_official(k): v for k, v in model.state_dict().items()},
                "args": namespace, "epoch": 89}, path)
    checkpoint = safe_load(path)

    overrides = {"vocab_file": str(DEMO_VOCAB), "split_root": "here/split"}
    fresh, official = resolve_config(checkpoint, overrides)
    assert official and fresh.imsize == 96 and fresh.enc_layers == 4
    assert fresh.data_root == "data/images" and fresh.split_root == "here/split"
    assert len(tokenizer_from_checkpoint(checkpoint, fresh, {"vocab_file"})) == 119
    torch.testing.assert_close(predictions(load_model(fresh, checkpoint, official), fresh), predictions(model, args),
                               rtol=0, atol=0)


def test_official_checkpoint_tokenizer_needs_no_hub(tmp_path, monkeypatch):
    """No --vocab_file, no --bert_model: bert-base-uncased's shipped vocabulary, and nothing asks the hub."""
    import transformers

    def no_hub(*_args, **_kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(transformers.BertTokenizerFast, "from_pretrained", no_hub)
    path = tmp_path / "official.pth"
    torch.save({"model": {"module.visumodel.input_proj.weight": torch.zeros(1)},
                "args": argparse.Namespace(imsize=640)}, path)
    args, official = resolve_config(safe_load(path))
    tokenizer = tokenizer_from_checkpoint(safe_load(path), args)
    assert official
    assert len(tokenizer) == 30522 and tokenizer.convert_tokens_to_ids("left") == 2187
