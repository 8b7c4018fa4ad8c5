"""The benchmarks' models (the full-size SegVG with parity case A's weights, or a small seeded one), and what the
processes they measure share."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source for a measured child process (python -c, maybe in another checkout): peak_mb(), its peak resident memory.
# VmHWM, not ru_maxrss: ru_maxrss keeps the parent's resident size from before exec.
PEAK_MB = """
def peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
"""


def write_checkpoint(path, model_flags):
    """A checkpoint of the benchmark's model: parity case A's weights at full size, else a seeded random init."""
    import torch

    from datasets import build_tokenizer
    from models import build_model
    from models.checkpoint import json_config, load_official_checkpoint, ours_to_official, safe_load, tokenizer_info
    from tools.parity_recipe import official_state_dict
    from utils.files import atomic_save
    from utils.options import build_training_parser

    args = build_training_parser().parse_args(["--bert_init", "random", *model_flags])
    torch.manual_seed(0)
    model = build_model(args)
    if not model_flags:
        recipe = safe_load(ROOT / "tests" / "data" / "case_A.pt")["recipe"]
        layout = {ours_to_official(k): v.shape for k, v in model.state_dict().items()}
        load_official_checkpoint(model, {"model": official_state_dict(recipe["weight_seed"], layout)})
    atomic_save({"model": model.state_dict(), "args": json_config(args),
                 "tokenizer": tokenizer_info(build_tokenizer(args), args), "epoch": 0}, path)
