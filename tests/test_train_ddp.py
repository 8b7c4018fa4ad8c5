"""DistributedDataParallel on gloo: two processes on halves of a batch train exactly like one process on the whole
batch, through the frozen-backbone epoch and the unfreeze, with a single DDP wrap."""
import torch
from helpers import spawn, synthetic_batch, tiny_train_args
from torch import nn

from engine import TrainState, train_one_epoch
from models import build_model
from models.criterion import build_criterion
from train import backbone_parameters, build_optimizer, wrap_model
from utils.distributed import init_distributed_mode

GLOBAL_BATCH = 4
# SGD: Adam's first step is ~lr * sign(grad), which would turn float round-off on near-zero gradients into lr.
FLAGS = ["--optimizer", "sgd", "--lr", "0.05", "--lr_bert", "0.05", "--lr_visu_cnn", "0.05", "--lr_visu_tra", "0.05",
         "--freeze_epochs", "1", "--clip_max_norm", "0.5"]


def train(rank, world_size, epochs=2):
    """One step per epoch on this rank's share of each epoch's global batch; returns (model, initial state)."""
    args = tiny_train_args(*FLAGS)
    init_distributed_mode(args)
    torch.manual_seed(0)
    model = build_model(args)
    for module in model.modules():
        if isinstance(module, nn.Dropout):  # BERT's dropout is not a flag; no random numbers in the model
            module.p = 0.0
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    backbone = backbone_parameters(model)
    optimizer = build_optimizer(model, args)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = build_criterion(args)
    wrapped = wrap_model(model, args, start_epoch=0)
    state = TrainState(wrapped, criterion, optimizer, scaler, torch.device("cpu"), args,
                       {"step": 0, "batch": 0, "train_seconds": 0.0})
    share = GLOBAL_BATCH // world_size
    for epoch in range(epochs):
        for param in backbone:
            param.requires_grad_(epoch >= args.freeze_epochs)
        batch = synthetic_batch(args, GLOBAL_BATCH, seed=epoch)
        local = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
        state.progress["batch"] = 0  # a new epoch
        train_one_epoch(state, [local], epoch)
    return model, initial


def ddp_worker(rank, world_size, path):
    model, _ = train(rank, world_size)
    if rank == 0:
        torch.save(model.state_dict(), path)


def test_two_processes_match_one_process(tmp_path):
    spawn(ddp_worker, 2, tmp_path / "ddp.pt")
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single, initial = train(0, 1)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    changed = {name for name, value in single.state_dict().items() if not torch.equal(value, initial[name])}
    assert any(n.startswith("visual.layers.") for n in changed) and any(n.startswith("text.") for n in changed)


def test_freeze_epochs_then_unfreeze_keeps_build_time_frozen_parameters():
    fresh = build_model(tiny_train_args(*FLAGS))
    toggled = {id(p) for p in backbone_parameters(fresh)}
    names = [n for n, _ in fresh.named_parameters()]
    backbone = {n for n, p in fresh.named_parameters() if id(p) in toggled}

    frozen_epoch, initial = train(0, 1, epochs=1)
    after_frozen = frozen_epoch.state_dict()
    changed = {n for n in names if not torch.equal(after_frozen[n], initial[n])}
    assert backbone and not changed & backbone, "frozen backbones moved during the freeze epoch"
    assert any(n.startswith("decoder.") for n in changed)

    unfrozen, initial = train(0, 1, epochs=2)
    after = unfrozen.state_dict()
    changed = {n for n in names if not torch.equal(after[n], initial[n])}
    stem = [n for n in names if n.startswith(("visual.backbone.body.conv1", "visual.backbone.body.layer1"))]
    pooler = [n for n in names if n.startswith("text.bert.pooler.")]
    assert stem and pooler and not changed & set(stem + pooler), "build-time frozen parameters were trained"
    assert backbone <= changed, "backbones did not train after the freeze epochs"
