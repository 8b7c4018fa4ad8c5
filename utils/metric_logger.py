"""Running averages of the training losses, over the samples of every rank."""
from collections import defaultdict

import torch
import torch.distributed as dist

from utils.distributed import is_dist_avail_and_initialized


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
