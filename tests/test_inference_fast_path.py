"""The inference fast path (BatchNorm folded, channels-last CNN) gives the model's outputs."""
import copy

import pytest
import torch
from torch import nn

from helpers import model_inputs, synthetic_batch, tiny_args
from inference.fast_path import fold_batchnorm, prepare_for_inference
from models import build_model
from models.backbone import FrozenBatchNorm2d


def randomize_norms(model, seed=0):
    """Non-trivial statistics, so that folding them is not an identity."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            n = module.running_mean.numel()
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.device
@pytest.mark.parametrize("norm", ["frozen", "batch"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_gives_the_model_outputs(norm, channels_last, device):
    from engine import to_device

    args = tiny_args("--backbone_norm", norm)
    torch.manual_seed(0)
    model = build_model(args)
    randomize_norms(model)
    model.eval().to(device)
    batch = to_device(synthetic_batch(args), device)
    with torch.no_grad():
        expected = model(*model_inputs(batch))
    norms = sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())
    fast = prepare_for_inference(copy.deepcopy(model), channels_last=channels_last)
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in fast.modules())
    assert fold_batchnorm(fast) == 0  # nothing left to fold
    assert fold_batchnorm(copy.deepcopy(model).eval()) == norms
    with torch.inference_mode():
        out = fast(*model_inputs(batch))
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    # The original model is left as it was.
    assert sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules()) == norms


def test_frozen_batchnorm_keeps_the_activation_dtype():
    norm = FrozenBatchNorm2d(4)
    norm.running_var.fill_(2.0)
    x = torch.randn(2, 4, 3, 3)
    assert norm(x.bfloat16()).dtype == torch.bfloat16
    torch.testing.assert_close(norm(x), torchvision_frozen(norm)(x), rtol=0, atol=0)


def torchvision_frozen(norm):
    from torchvision.ops import FrozenBatchNorm2d as Reference
    reference = Reference(norm.weight.numel())
    reference.load_state_dict(norm.state_dict())
    return reference
