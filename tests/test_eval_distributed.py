"""Evaluation counts every sample exactly once whatever the world size (no DistributedSampler padding)."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datasets import collate_fn
from engine import evaluate
from helpers import spawn, synthetic_batch, tiny_train_args
from models import build_model
from utils.distributed import init_distributed_mode
from datasets.samplers import ShardSampler

NUM_SAMPLES = 7  # not a multiple of 2 or 3


class SyntheticDataset(Dataset):
    def __init__(self, args):
        self.batch = synthetic_batch(args, NUM_SAMPLES, seed=0)

    def __len__(self):
        return NUM_SAMPLES

    def __getitem__(self, i):
        sample = {k: v[i] for k, v in self.batch.items()}
        sample["index"] = i
        return sample


def evaluate_sharded(rank, world_size):
    args = tiny_train_args()
    init_distributed_mode(args)
    torch.manual_seed(0)
    model = build_model(args)
    dataset = SyntheticDataset(args)
    loader = DataLoader(dataset, batch_size=2, sampler=ShardSampler(len(dataset), rank, world_size),
                        collate_fn=collate_fn)
    return evaluate(model, loader, torch.device("cpu"))


def eval_worker(rank, world_size, path):
    results = evaluate_sharded(rank, world_size)
    if rank == 0:
        torch.save(results, path)


@pytest.fixture(scope="module")
def single_process_results():
    return evaluate_sharded(0, 1)


def test_single_process_covers_the_dataset(single_process_results):
    assert sorted(single_process_results) == list(range(NUM_SAMPLES))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_sample_counted_once(tmp_path, world_size, single_process_results):
    spawn(eval_worker, world_size, tmp_path / "results.pt")
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    assert sorted(results) == list(range(NUM_SAMPLES))
    for index, (iou, box, confidence, masks) in single_process_results.items():
        assert masks is None and results[index][3] is None
        assert results[index][0] == pytest.approx(iou, abs=1e-6)
        assert results[index][1] == pytest.approx(box, abs=1e-6)
        assert results[index][2] == pytest.approx(confidence, abs=1e-6)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_sampler_partitions_without_padding(world_size):
    shards = [list(ShardSampler(NUM_SAMPLES, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(NUM_SAMPLES))
    assert [len(ShardSampler(NUM_SAMPLES, r, world_size)) for r in range(world_size)] == [len(s) for s in shards]
