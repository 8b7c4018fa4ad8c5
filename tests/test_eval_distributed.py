"""Evaluation counts every sample exactly once whatever the world size (no DistributedSampler padding), with an
image's expressions batched together and its CNN run once, and gives the results of one canvas per expression."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datasets import build_eval_loader, collate_fn
from datasets.samplers import ImageBatchSampler
from engine import evaluate
from helpers import spawn, synthetic_batch, tiny_train_args
from models import build_model
from utils.distributed import init_distributed_mode

IMAGE_OF_SAMPLE = [0, 0, 1, 2, 2, 2, 3]  # 7 expressions (not a multiple of 2 or 3) on 4 images


class SyntheticDataset(Dataset):
    """Expressions on shared images: samples of one image have its canvas."""

    def __init__(self, args):
        self.batch = synthetic_batch(args, len(IMAGE_OF_SAMPLE), seed=0)
        images = synthetic_batch(args, max(IMAGE_OF_SAMPLE) + 1, seed=1)["img"]
        self.batch["img"] = images[IMAGE_OF_SAMPLE]

    def __len__(self):
        return len(IMAGE_OF_SAMPLE)

    def image_keys(self):
        return [f"{k}.jpg" for k in IMAGE_OF_SAMPLE]

    def __getitem__(self, i):
        sample = {k: v[i] for k, v in self.batch.items()}
        sample.update(index=i, image_id=IMAGE_OF_SAMPLE[i])
        return sample


def evaluate_sharded(rank, world_size, grouped=True):
    args = tiny_train_args()
    init_distributed_mode(args)
    torch.manual_seed(0)
    model = build_model(args)
    dataset = SyntheticDataset(args)
    if grouped:
        loader = build_eval_loader(dataset, batch_size=3, num_workers=0)
    else:  # one canvas per expression
        loader = DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    return evaluate(model, loader, torch.device("cpu"))


def eval_worker(rank, world_size, path):
    results = evaluate_sharded(rank, world_size)
    if rank == 0:
        torch.save(results, path)


@pytest.fixture(scope="module")
def single_process_results():
    return evaluate_sharded(0, 1)


def test_grouped_evaluation_equals_one_canvas_per_expression(single_process_results):
    assert sorted(single_process_results) == list(range(len(IMAGE_OF_SAMPLE)))
    ungrouped = evaluate_sharded(0, 1, grouped=False)
    for index, (iou, box, confidence, *_) in ungrouped.items():
        assert single_process_results[index][0] == pytest.approx(iou, abs=1e-5)
        assert single_process_results[index][1] == pytest.approx(box, abs=1e-5)
        assert single_process_results[index][2] == pytest.approx(confidence, abs=1e-5)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_sample_counted_once(tmp_path, world_size, single_process_results):
    spawn(eval_worker, world_size, tmp_path / "results.pt")
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    assert sorted(results) == list(range(len(IMAGE_OF_SAMPLE)))
    for index, (iou, box, confidence, masks, answer) in single_process_results.items():
        assert masks is None and results[index][3] is None
        # No presence head, no components; the mask's presence score is computed for every phrase.
        assert answer["present"] is results[index][4]["present"] is None and answer["boxes"] is None
        assert results[index][4]["mask_present"] == pytest.approx(answer["mask_present"], abs=1e-6)
        assert results[index][0] == pytest.approx(iou, abs=1e-6)
        assert results[index][1] == pytest.approx(box, abs=1e-6)
        assert results[index][2] == pytest.approx(confidence, abs=1e-6)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_image_batches_partition_by_image_without_padding(world_size, batch_size):
    keys = IMAGE_OF_SAMPLE + [4, 4, 4, 4, 4]  # an image with more expressions than a batch holds
    shards = [list(ImageBatchSampler(keys, batch_size, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(len(keys)))
    for rank, shard in enumerate(shards):
        assert all(0 < len(batch) <= batch_size for batch in shard)
        images = {keys[i] for batch in shard for i in batch}
        assert all(image % world_size == rank for image in images)  # an image on one rank only
        for batch in shard:  # an image is split over batches only when it alone fills one
            for image in {keys[i] for i in batch}:
                split = sum(image in {keys[i] for i in b} for b in shard)
                assert split == 1 or keys.count(image) > batch_size
