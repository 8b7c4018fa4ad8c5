"""--device: where the tests marked `device` run their model and loss (tools/gpu_check.sh runs them with
`pytest -m device --device cuda`); every other test runs on the CPU."""
import pytest
import torch

from utils.runtime import set_tf32


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device of the tests marked 'device' (cpu, cuda, cuda:N)")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs its model and loss on --device (cpu by default)")


@pytest.fixture(scope="session")
def device(request):
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("--device cuda given, but CUDA is not available")
        # fp32 comparisons in fp32: cuDNN runs convolutions in TF32 by default on Ampere and newer.
        set_tf32(False)
    return device
