"""--device: where the tests marked `device` run their model and loss (tools/gpu_check.sh runs them with
`pytest -m device --device cuda`); every other test runs on the CPU. Files with tests marked `slow` run first, so that
the two test processes (pytest -n 2 --dist loadfile) do not end on one long file each."""
import os

import pytest
import torch

from utils.runtime import set_tf32


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device of the tests marked 'device' (cpu, cuda, cuda:N)")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs its model and loss on --device (cpu by default)")
    config.addinivalue_line("markers", "slow: takes 25 s or more on 2 CPU cores (-m 'not slow' leaves them out)")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # pytest -n N: N test processes share the cores; each would otherwise start a thread per core
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", threads)  # and so would the scripts the tests start


def pytest_collection_modifyitems(config, items):
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file keeps its order


@pytest.fixture(scope="session")
def device(request):
    device = torch.device(request.config.getoption("--device"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("--device cuda given, but CUDA is not available")
        # fp32 comparisons in fp32: cuDNN runs convolutions in TF32 by default on Ampere and newer.
        set_tf32(False)
    return device


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """(checkpoint, export) of the tiny model, exported once with the export's own check (the ONNX tests share it:
    an export takes ~20 s)."""
    pytest.importorskip("onnxruntime", reason="pip install -r requirements-onnx.txt")
    pytest.importorskip("onnxscript", reason="pip install -r requirements-onnx.txt")
    from helpers import write_tiny_checkpoint
    from tools import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = write_tiny_checkpoint(folder / "best_checkpoint.pth")
    assert export_onnx.main(["--checkpoint", str(checkpoint), "--out", str(folder / "segvg.onnx")]) == 0
    return checkpoint, folder / "segvg.onnx"
