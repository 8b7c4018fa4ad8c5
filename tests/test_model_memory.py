"""Activation checkpointing gives the gradients (and BatchNorm statistics) of the plain model."""
import copy

import pytest
import torch
from helpers import model_inputs, synthetic_batch, tiny_args

import models.activation_checkpointing as activation_checkpointing
from models import build_model
from models.criterion import build_criterion


def loss_gradients(model, args, batch, seed=3):
    model.train()
    torch.manual_seed(seed)  # the same dropout masks in both runs
    out = model(*model_inputs(batch))
    build_criterion(args)(out, batch["target"], batch["pos_region"])["loss"].backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm", ["frozen", "batch"])
def test_checkpointed_activations_give_the_same_gradients(norm, monkeypatch):
    args = tiny_args("--backbone_norm", norm, "--train_stem", "--dropout", "0.2", "--vl_dropout", "0.2")
    torch.manual_seed(0)
    plain_model = build_model(args)
    model = copy.deepcopy(plain_model)
    model.set_activation_checkpointing(True)
    batch = synthetic_batch(args)
    calls = []
    checkpoint = activation_checkpointing.checkpoint
    monkeypatch.setattr(activation_checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))

    plain = loss_gradients(plain_model, args, batch)
    assert not calls
    checkpointed = loss_gradients(model, args, batch)
    # Per stage one visual layer, its BERT layers and the Triple Alignment; the VL encoder and decoder layers;
    # every block of the ResNet stages unless their BatchNorm trains (its running statistics would be updated twice).
    per_stage = 2 + args.bert_layers // args.enc_layers
    body = model.visual.backbone.body
    resnet = 0 if norm == "batch" else sum(len(stage) for name, stage in body.items() if name.startswith("layer"))
    assert norm == "batch" or resnet == 8  # resnet18: 2 blocks in each of its 4 stages
    assert len(calls) == args.enc_layers * per_stage + args.vl_enc_layers + args.vl_dec_layers + resnet
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    for (name, a), b in zip(plain_model.named_buffers(), model.buffers()):
        torch.testing.assert_close(b, a, msg=name)
    with torch.no_grad():  # nothing is checkpointed without a gradient
        calls.clear()
        model(*model_inputs(batch))
        assert not calls
