import argparse
import os

import pytest
import torch
from helpers import model_inputs, synthetic_batch, tiny_args

from models import build_model, checkpoint
from models.checkpoint import (load_detr_weights, load_official_checkpoint, load_state_dict_checked, ours_to_official,
                               safe_load)
from utils.files import FileWriteError, atomic_save


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    first = build_model(tiny_args()).eval()
    torch.manual_seed(1)
    return first, build_model(tiny_args()).eval()


def outputs(model):
    with torch.no_grad():
        return model(*model_inputs(synthetic_batch(tiny_args())))


def test_state_dict_round_trip(models, tmp_path):
    source, target = models
    path = tmp_path / "ckpt.pth"
    atomic_save({"model": source.state_dict(), "config": vars(tiny_args())}, path)
    load_state_dict_checked(target, safe_load(path)["model"])
    for key, value in outputs(source).items():
        torch.testing.assert_close(outputs(target)[key], value, rtol=0, atol=0)
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def official_file(model, tmp_path, edit=lambda sd: sd):
    """An original-style checkpoint: official names, `module.` prefix, position_ids, pickled Namespace."""
    state = {"module." + ours_to_official(k): v.clone() for k, v in model.state_dict().items()}
    state["module.textmodel.embeddings.position_ids"] = torch.arange(512)[None]
    path = tmp_path / "official.pth"
    torch.save({"model": edit(state), "optimizer": {}, "epoch": 3, "args": argparse.Namespace(lr=1e-4),
                "val_accu": 0.5, "best_accu": 0.5}, path)
    return path


def test_official_checkpoint_loads_strictly(models, tmp_path):
    source, target = models
    loaded = load_official_checkpoint(target, official_file(source, tmp_path))
    assert loaded["args"].lr == 1e-4
    for key, value in outputs(source).items():
        torch.testing.assert_close(outputs(target)[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("edit, message", [
    (lambda sd: {k: v for k, v in sd.items() if "reg_seg_pos" not in k}, "missing from .*reg_seg_pos.weight"),
    (lambda sd: dict(sd, **{"module.seg_embed.layers.9.bias": torch.zeros(1)}), "seg_embed.layers.9.bias"),
    (lambda sd: dict(sd, **{"module.vl_pos_embed.weight": torch.zeros(3, 32)}),
     r"shape mismatch.*vl_pos_embed\.weight .*\(3, 32\)"),
])
def test_official_checkpoint_errors_name_the_key(models, tmp_path, edit, message):
    source, target = models
    with pytest.raises((RuntimeError, KeyError), match=message):
        load_official_checkpoint(target, official_file(source, tmp_path, edit))


def test_official_key_map_is_a_bijection_on_the_model(models):
    keys = list(models[0].state_dict())
    official = [ours_to_official(k) for k in keys]
    assert len(set(official)) == len(keys)
    assert [checkpoint.official_to_ours(k) for k in official] == keys


def test_detr_weights_initialise_the_visual_branch(models, tmp_path):
    source, target = models
    # A DETR checkpoint has six encoder layers, a decoder and heads; the tiny model uses two layers.
    detr = {ours_to_official(k).removeprefix("visumodel."): v.clone()
            for k, v in source.state_dict().items() if k.startswith("visual.")}
    layer = {k: v for k, v in detr.items() if k.startswith("transformer.encoder.layers.0.")}
    detr.update({k.replace("layers.0.", "layers.5."): v for k, v in layer.items()})
    extra = ["transformer.decoder.layers.0.linear1.weight", "class_embed.weight", "query_embed.weight"]
    detr.update({k: torch.zeros(2, 2) for k in extra})
    path = tmp_path / "detr.pth"
    torch.save({"model": detr}, path)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    used, ignored = load_detr_weights(target, path)
    assert set(ignored) == set(extra) | {k.replace("layers.0.", "layers.5.") for k in layer}
    assert len(used) == len(detr) - len(ignored)
    for key, value in target.state_dict().items():
        expected = source.state_dict()[key] if key.startswith("visual.") else before[key]
        assert torch.equal(value, expected), key


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        safe_load(tmp_path / "nowhere.pth")


def test_atomic_save_keeps_the_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pth"
    atomic_save({"epoch": 1}, path)

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(FileWriteError, match="cannot write .*checkpoint_latest.pth: disk full; the previous "
                                              "checkpoint is kept"):
        atomic_save({"epoch": 2}, path)
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]
    assert safe_load(path)["epoch"] == 1
