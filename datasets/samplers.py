"""Samplers: evaluation shards by image without DistributedSampler's padding; training batches that can start
mid-epoch; an epoch's shuffled order held as one tensor (not a list of Python ints: 6M of them take ~220 MB per
process); a mix of datasets drawn by ratio."""
import itertools

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DistributedSampler, Sampler


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


def iterate(indices, chunk=1 << 16):
    """The ints of a 1-d tensor, converted a chunk at a time."""
    for start in range(0, len(indices), chunk):
        yield from indices[start:start + chunk].tolist()


def shard(order, num_samples, rank, world_size):
    """DistributedSampler's split of an order over the ranks: padded with its own start to num_samples x world_size,
    then every world_size-th index from rank."""
    total = num_samples * world_size
    if total > len(order):
        order = torch.cat([order] * (total // len(order)) + [order[:total % len(order)]])
    return order[rank:total:world_size]


class ShuffledSampler(DistributedSampler):
    """DistributedSampler (shuffled, padded), the same order for the same (seed, epoch), held as a tensor."""

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iterate(shard(torch.randperm(len(self.dataset), generator=g), self.num_samples, self.rank,
                             self.num_replicas))


class ImageBatchSampler(Sampler):
    """Evaluation batches that keep an image's expressions together, so that the model encodes each image once.

    image_keys[i]: the image of sample i (any values numpy can sort: image numbers, file names). Images (in the order
    of their first sample) go to the ranks in turn (image k to rank k % world_size): every sample on exactly one rank,
    none repeated. A batch takes whole images while they fit in batch_size expressions; an image with more
    expressions than that is split over batches of its own.
    """

    def __init__(self, image_keys, batch_size, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        _, first, image = np.unique(np.asarray(image_keys), return_index=True, return_inverse=True)
        position = np.empty(len(first), np.int64)  # each image's place in the order of first appearance
        position[np.argsort(first, kind="stable")] = np.arange(len(first))
        order = position[image.reshape(-1)]
        mine = np.flatnonzero(order % world_size == rank)
        mine = mine[np.argsort(order[mine], kind="stable")]  # by image, each image's samples in index order
        starts = np.flatnonzero(np.diff(order[mine], prepend=-1)) if len(mine) else np.zeros(0, np.int64)
        self.batches, batch = [], []
        for group in np.split(mine, starts[1:]) if len(mine) else []:
            group = group.tolist()
            if batch and len(batch) + len(group) > batch_size:
                self.batches.append(batch)
                batch = []
            while len(group) > batch_size:
                self.batches.append(group[:batch_size])
                group = group[batch_size:]
            batch = batch + group
        if batch:
            self.batches.append(batch)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class MixSampler(Sampler):
    """Training indices of a mix of datasets drawn by ratio (--dataset_ratios): an epoch draws as many samples as the
    mix holds, dataset d's share ratios[d] (normalised) of them, without repeats within a dataset until it is used
    up; shuffled and split over the ranks as DistributedSampler does (padded to a multiple of the world size). The
    order depends only on (seed, epoch), so that a resumed run sees the same batches."""

    def __init__(self, sizes, ratios, seed=0, rank=0, world_size=1):
        if len(sizes) != len(ratios) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"--dataset_ratios {ratios}: one non-negative number per dataset ({len(sizes)}), "
                             f"not all zero")
        self.sizes, self.seed, self.rank, self.world_size = list(sizes), seed, rank, world_size
        self.offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        total = sum(sizes)
        shares = [total * r / sum(ratios) for r in ratios]
        self.counts = [int(s) for s in shares]
        # The draws left by rounding down go to the largest remainders.
        for k in sorted(range(len(shares)), key=lambda k: shares[k] - self.counts[k], reverse=True)[:total - sum(self.counts)]:
            self.counts[k] += 1
        self.num_samples = -(-total // world_size)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        drawn = []
        for offset, size, count in zip(self.offsets, self.sizes, self.counts):
            rounds = [torch.randperm(size, generator=g) for _ in range(-(-count // size))] if count else []
            drawn.append(torch.cat(rounds)[:count] + offset if rounds else torch.empty(0, dtype=torch.long))
        order = torch.cat(drawn)[torch.randperm(sum(self.counts), generator=g)]
        return iterate(shard(order, self.num_samples, self.rank, self.world_size))

    def __len__(self):
        return self.num_samples
