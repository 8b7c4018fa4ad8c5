"""Distributed helpers (torchrun's env:// or one plain process), seeding, RNG states and metric averaging."""
import builtins
import importlib.util
import os
import random
import shutil
import warnings
from collections import defaultdict

import cv2
import numpy as np
import torch
import torch.distributed as dist


def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process():
    return get_rank() == 0


def setup_for_distributed(is_master):
    """Silence print() on every rank but 0; print(..., force=True) still prints."""
    builtin_print = builtins.print

    def print(*args, **kwargs):
        if kwargs.pop("force", False) or is_master:
            builtin_print(*args, **kwargs)

    builtins.print = print


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; a CUDA device that is not there is an error, not a fallback."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} was requested but CUDA is not available; use --device cpu (or auto)")
    return name


def init_distributed_mode(args):
    """Join the process group described by torchrun's RANK/WORLD_SIZE/LOCAL_RANK; without them run alone.

    Sets args.distributed, args.rank, args.world_size, args.gpu and resolves args.device (nccl on GPUs, gloo on CPU).
    """
    args.device = resolve_device(args.device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        args.distributed, args.rank, args.world_size, args.gpu = False, 0, 1, 0
        return
    args.distributed = True
    args.rank = int(os.environ["RANK"])
    args.world_size = int(os.environ["WORLD_SIZE"])
    args.gpu = int(os.environ.get("LOCAL_RANK", 0))
    if args.device.startswith("cuda"):
        torch.cuda.set_device(args.gpu)
        args.device = f"cuda:{args.gpu}"
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=args.world_size, rank=args.rank)
    dist.barrier()
    setup_for_distributed(args.rank == 0)


def compiler_missing(device_type):
    """Why torch.compile cannot run on this device type here, or None: inductor needs a C++ compiler for CPU code
    and Triton for CUDA kernels."""
    if device_type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return None if any(c and shutil.which(c) for c in compilers) else "no C++ compiler (g++, clang++ or $CXX) found"


def compile_model(model, device):
    """model.compile() in place (state_dict keys unchanged), or the model as it is, with a warning, where the
    compiler it needs is missing."""
    missing = compiler_missing(torch.device(device).type)
    if missing:
        warnings.warn(f"--compile ignored: {missing}; running the model uncompiled", stacklevel=2)
        return model
    model.compile()
    return model


def enable_tf32():
    """TF32 matrix products and convolutions on Ampere or newer GPUs (~1e-3 relative precision)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def limit_opencv_threads():
    """OpenCV's own thread pool fights torch's OpenMP threads for the cores: on 2 CPU cores it made data loading
    ~20x slower. Samples are small, so OpenCV runs single-threaded; DataLoader workers give the parallelism."""
    cv2.setNumThreads(1)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def get_rng_state():
    """Every RNG this process draws from, as tensors and plain Python values (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_gather_object(obj):
    """List of obj from every rank (rank order); [obj] when not distributed."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_mean(values, device):
    """Average a list of floats over all ranks (one all_reduce); returns a list of floats."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor)
        tensor /= get_world_size()
    return tensor.tolist()


class MetricLogger:
    """Running sums of named scalars, weighted by sample count, averaged over all ranks on demand."""

    def __init__(self):
        self.sums = defaultdict(float)
        self.counts = defaultdict(float)

    def update(self, n=1, **values):
        for name, value in values.items():
            self.sums[name] += float(value) * n
            self.counts[name] += n

    def global_averages(self, device="cpu"):
        names = sorted(self.sums)
        totals = torch.tensor([[self.sums[k] for k in names], [self.counts[k] for k in names]],
                              dtype=torch.float64, device=device)
        if is_dist_avail_and_initialized():
            dist.all_reduce(totals)
        return {k: (s / c if c else float("nan")) for k, s, c in zip(names, *totals.tolist())}

    def state_dict(self):
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state):
        self.sums.update(state["sums"])
        self.counts.update(state["counts"])
