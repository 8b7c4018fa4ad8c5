"""Evaluation sampler: each rank gets every world_size-th index, without DistributedSampler's padding."""
from torch.utils.data import Sampler


class ShardSampler(Sampler):
    """Indices rank, rank + world_size, ... < num_samples: every sample on exactly one rank, none repeated."""

    def __init__(self, num_samples, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.num_samples, self.world_size))
