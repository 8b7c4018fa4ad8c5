"""Samplers: evaluation shards by image without DistributedSampler's padding; training batches that can start
mid-epoch; a mix of datasets drawn by ratio."""
import itertools

import torch
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


class ImageBatchSampler(Sampler):
    """Evaluation batches that keep an image's expressions together, so that the model encodes each image once.

    image_keys[i]: the image of sample i. Images (in the order of their first sample) go to the ranks in turn (image
    k to rank k % world_size): every sample on exactly one rank, none repeated. A batch takes whole images while they
    fit in batch_size expressions; an image with more expressions than that is split over batches of its own.
    """

    def __init__(self, image_keys, batch_size, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        groups = {}
        for index, key in enumerate(image_keys):
            groups.setdefault(key, []).append(index)
        self.batches, batch = [], []
        for group in list(groups.values())[rank::world_size]:
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
        order = torch.cat(drawn)[torch.randperm(sum(self.counts), generator=g)].tolist()
        order += order[:self.num_samples * self.world_size - len(order)]
        return iter(order[self.rank::self.world_size])

    def __len__(self):
        return self.num_samples
