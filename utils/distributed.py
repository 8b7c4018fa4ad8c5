"""torch.distributed helpers: torchrun's env:// process group or one plain process, gathers and reductions."""
import builtins
import datetime
import os

import torch
import torch.distributed as dist

from utils.runtime import resolve_device

DEFAULT_TIMEOUT = 1800  # seconds, --dist_timeout: PyTorch's own default for NCCL


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


def init_distributed_mode(args):
    """Join the process group described by torchrun's RANK/WORLD_SIZE/LOCAL_RANK; without them run alone.

    Sets args.distributed, args.rank, args.world_size, args.gpu and resolves args.device (nccl on GPUs, gloo on CPU).
    A collective that waits longer than args.dist_timeout seconds (a rank hung on a dead file system, stopped, lost)
    ends the process with an error, so that the job stops instead of waiting forever, and restarts or requeues.
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
    # NCCL's watchdog then aborts a timed-out collective instead of leaving it blocked (PyTorch's advice).
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = datetime.timedelta(seconds=getattr(args, "dist_timeout", DEFAULT_TIMEOUT))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is not None and args.dist_url == "env://":
        # Workers restarted by torchrun (--max_restarts) meet in the store of the failed round, whose keys would
        # send them to the dead workers' addresses: each round gets keys of its own.
        store, _, _ = next(dist.rendezvous(args.dist_url, timeout=timeout))
        store = dist.PrefixStore(f"segvg/round_{restart}", store)
        dist.init_process_group(backend=backend, store=store, world_size=args.world_size, rank=args.rank,
                                timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=args.world_size,
                                rank=args.rank, timeout=timeout)
    dist.barrier()
    setup_for_distributed(args.rank == 0)


def collective_timeout(err, seconds):
    """The one line to print when err is a collective that timed out (gloo: "Timed out waiting ...", NCCL's
    watchdog: "... timeout ..."), else None."""
    text = str(err).strip()
    if "timed out" not in text.lower() and "timeout" not in text.lower():
        return None
    detail = text.splitlines()[0][:200] if text else type(err).__name__
    return (f"rank {get_rank()}: a collective waited more than --dist_timeout {seconds:g} s for another process, "
            f"which hangs or was stopped ({detail}); the run ends so that it can be restarted or requeued")


def destroy_process_group():
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


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
