"""Process-wide settings of a run: the device, torch.compile, TF32, OpenCV's thread pool, the C allocator."""
import ctypes
import importlib.util
import os
import platform
import shutil
import warnings

import cv2
import torch


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; a CUDA device that is not there is an error, not a fallback."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} was requested but CUDA is not available; use --device cpu (or auto)")
    return name


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


def set_tf32(enabled):
    """TF32 matrix products and convolutions on Ampere or newer GPUs (~1e-3 relative precision), or neither: full fp32
    (cuDNN's default is TF32 convolutions)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def limit_opencv_threads():
    """OpenCV's own thread pool fights torch's OpenMP threads for the cores: on 2 CPU cores it made data loading
    ~20x slower. Samples are small, so OpenCV runs single-threaded; DataLoader workers give the parallelism."""
    cv2.setNumThreads(1)


def keep_freed_memory():
    """Make glibc's malloc keep large freed blocks for the next request instead of handing them back to the kernel
    (what tools/launch.sh sets through GLIBC_TUNABLES for training): a photo's full-size mask is otherwise faulted in
    page by page on every prediction. -> a line that says so, or None where nothing was changed: not glibc,
    SEGVG_ALLOCATOR=system, or GLIBC_TUNABLES already set by the user."""
    if os.environ.get("SEGVG_ALLOCATOR", "auto") == "system" or os.environ.get("GLIBC_TUNABLES"):
        return None
    if platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)  # the C library the process already runs on
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    if not (libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
        return None
    return "CPU allocator: glibc keeping freed memory (SEGVG_ALLOCATOR=system keeps its defaults)"
