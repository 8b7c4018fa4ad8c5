"""Samplers: evaluation shards without DistributedSampler's padding; training batches that can start mid-epoch."""
import itertools

import torch.distributed as dist
from torch.utils.data import BatchSampler, Sampler


def world_and_rank():
    """(world size, rank) of the process group the samplers shard over; (1, 0) in a plain process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableBatchSampler(BatchSampler):
    """BatchSampler whose epoch starts at batch `start` (set on a mid-epoch resume): the batches before it are
    skipped without loading their samples. len() stays the whole epoch's."""

    def __init__(self, sampler, batch_size, drop_last):
        super().__init__(sampler, batch_size, drop_last)
        self.start = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)


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
