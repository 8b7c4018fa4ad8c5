"""The model on --device against the CPU (tools/gpu_check.sh: `pytest -m device --device cuda`): forward and backward,
a checkpoint saved there and loaded on the CPU, and fused AdamW against the unfused step. With the default
--device cpu the cross-device comparisons are skipped; the AdamW and checkpoint tests still run."""
import copy

import pytest
import torch
from helpers import model_inputs, synthetic_batch, tiny_args, without_dropout

from engine import to_device
from models import build_model
from models.checkpoint import safe_load
from models.criterion import build_criterion
from utils.files import atomic_save

pytestmark = pytest.mark.device


def deterministic_model(seed=0):
    torch.manual_seed(seed)
    return without_dropout(build_model(tiny_args()).train())


def forward_backward(model, batch, criterion):
    model.zero_grad(set_to_none=True)
    out = model(*model_inputs(batch))
    losses = criterion(out, batch["target"], batch["pos_region"])
    losses["loss"].backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach().cpu() for k, v in out.items()}, {k: v.item() for k, v in losses.items()}, grads


def test_forward_and_backward_match_the_cpu(device):
    """fp32 on the device vs the CPU: outputs within 1e-4, losses within 1e-5 relative, every gradient tensor within
    1e-3 of its largest value (the device fixture turns TF32 off, so these are float rounding differences)."""
    if device.type == "cpu":
        pytest.skip("compares --device with the CPU: run with --device cuda")
    args = tiny_args()
    criterion = build_criterion(args)
    batch = synthetic_batch(args)
    model = deterministic_model()
    out_cpu, losses_cpu, grads_cpu = forward_backward(model, batch, criterion)
    out_dev, losses_dev, grads_dev = forward_backward(copy.deepcopy(model).to(device), to_device(batch, device),
                                                      criterion)
    for key in ("pred_boxes", "aux_boxes", "seg_logits", "aux_seg_logits"):
        torch.testing.assert_close(out_dev[key], out_cpu[key], rtol=1e-4, atol=1e-4, msg=key)
    assert losses_dev == pytest.approx(losses_cpu, rel=1e-5)
    assert grads_dev.keys() == grads_cpu.keys()
    for name, grad in grads_cpu.items():
        scale = grad.abs().max().item() + 1e-12
        assert (grads_dev[name] - grad).abs().max().item() <= 1e-3 * scale, name


def test_checkpoint_saved_on_the_device_loads_on_the_cpu(device, tmp_path):
    model = deterministic_model().eval().to(device)
    batch = synthetic_batch(tiny_args())
    with torch.no_grad():
        expected = model(*model_inputs(to_device(batch, device)))["pred_boxes"].cpu()
    atomic_save({"model": model.state_dict()}, tmp_path / "checkpoint.pth")
    state = safe_load(tmp_path / "checkpoint.pth")["model"]
    assert all(t.device.type == "cpu" for t in state.values())
    cpu_model = build_model(tiny_args()).eval()
    cpu_model.load_state_dict(state)
    with torch.no_grad():
        got = cpu_model(*model_inputs(batch))["pred_boxes"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_fused_adamw_step_equals_the_unfused_one(device):
    """Two AdamW steps on the same gradients, fused and unfused (the same gradients: a second forward on already
    different weights would amplify round-off through the near-zero gradients of BERT's key biases)."""
    args = tiny_args()
    model = deterministic_model().to(device)
    forward_backward(model, to_device(synthetic_batch(args), device), build_criterion(args))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    results = []
    for fused in (False, True):
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(start[name])
                param.grad = grads[name].clone() if name in grads else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=fused)
        for _ in range(2):
            optimizer.step()
        results.append({n: p.detach().cpu().clone() for n, p in model.named_parameters()})
    unfused, fused = results
    assert sum(not torch.equal(unfused[n], start[n].cpu()) for n in grads) == len(grads)  # every step moved
    for name in unfused:
        torch.testing.assert_close(fused[name], unfused[name], rtol=1e-5, atol=1e-6, msg=name)
