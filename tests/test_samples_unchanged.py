"""The samples a run draws stay what they were when the datasets held their records as Python lists: for fixed seeds
the same images, phrases, boxes, masks and augmentations, batch order and evaluation batches, on the demo, a JSONL
set with several-target and no-target records (the demo's gref level, plus hand-written records with float boxes,
polygons, ids and types) and a mix of REFER-layout datasets whose planted evaluation images are dropped.

tests/data/samples_before_index.json was drawn with the list-based loader; `python tests/test_samples_unchanged.py
--write` draws it again (only to be done when a change of the samples is intended)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import build_dataset, build_loaders, build_tokenizer, demo
from train import get_args_parser

FIXTURE = Path(__file__).parent / "data" / "samples_before_index.json"
COCO_DIR = "other/images/mscoco/images/train2014"
# dataset -> split -> COCO image ids; 7 (unc val) and 8 (unc testA) are planted in training splits.
REFER = {"unc": {"train": [1, 2, 3, 7], "val": [7, 9], "testA": [8]},
         "unc+": {"train": [1, 7, 7, 10], "val": [11]},
         "gref_umd": {"train": [8, 14, 18, 2], "val": [15], "test": [16]}}
HAND = [  # float boxes, polygons, ids and types, one, several and no target
    {"image": "hand/a.png", "phrase": "The left thing", "box": [1.7, 2.2, 20.9, 18.5], "id": 7, "type": "pos",
     "mask": [[2, 3, 2, 18, 20, 18, 20, 3]]},
    {"image": "hand/a.png", "phrase": "both things", "boxes": [[1.5, 2, 20, 18], [24.25, 4, 40, 28.75]], "id": "x"},
    {"image": "hand/b.png", "phrase": "the purple circle", "boxes": [], "type": "none"},
    {"image": "hand/b.png", "phrase": "a thing", "boxes": [[3, 3, 30, 20]],
     "masks": [{"size": [30, 44], "counts": [100, 20, 1200]}]},
    {"image": "hand/a.png", "phrase": "the right thing", "box": [24, 4, 40, 28]},
]
AUGMENT = ["--aug_crop", "--aug_scale", "--aug_translate", "--aug_blur", "--color_jitter", "0.4"]


def make_data(root):
    """The demo (easy and gref levels, small), hand-written JSONL records and the REFER layout under root."""
    demo.main(["--output_dir", str(root), "--seed", "5", "--train", "24", "--val", "8", "--test", "8"])
    demo.main(["--output_dir", str(root), "--level", "gref", "--seed", "5", "--train", "24", "--val", "8",
               "--test", "8", "--no_target_share", "0.3"])
    rng = np.random.default_rng(0)
    (root / "hand").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(root / "hand" / name)
    (root / "split" / "hand").mkdir(parents=True)
    for split, records in (("train", HAND), ("val", [{**r, "image": "hand/c.png"} for r in HAND])):
        (root / "split" / "hand" / f"hand_{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records) + "\n")
    images = root / COCO_DIR
    images.mkdir(parents=True)
    for n in sorted({n for splits in REFER.values() for ids in splits.values() for n in ids}):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"COCO_train2014_{n:012d}.jpg")
    for dataset, splits in REFER.items():
        (root / "split" / dataset).mkdir(parents=True)
        for split, ids in splits.items():
            rows = [(f"COCO_train2014_{n:012d}.jpg", 100 + k, [4.5, 6.9, 30.2, 20.7], f"Thing number {k}", [])
                    for k, n in enumerate(ids)]
            torch.save(rows, root / "split" / dataset / f"{dataset}_{split}.pth")


CASES = {  # name -> flags
    "demo": ["--dataset", "demo", "--mask_head", "fine", "--mask_supervision", "mask", *AUGMENT],
    "demo_gref": ["--dataset", "demo_gref", "--mask_head", "fine", "--mask_supervision", "mask", *AUGMENT],
    "hand": ["--dataset", "hand", "--mask_head", "fine", "--mask_supervision", "mask", "--float_boxes", *AUGMENT],
    "mix": ["--dataset", "unc,unc+,gref_umd,hand", "--dataset_ratios", "1,1,2,1", *AUGMENT],
}


def args_for(root, flags):
    return get_args_parser().parse_args(
        ["--data_root", str(root), "--split_root", str(root / "split"), "--imsize", "40", "--max_query_len", "8",
         "--batch_size", "3", "--num_workers", "0", "--device", "cpu", "--bert_model", "bert-base-uncased",
         "--seed", "3", *flags])


def plain(value):
    """JSON-comparable form of sample_info values."""
    return json.loads(json.dumps(value, default=str))


def summary(sample):
    """What identifies a sample: exact integers, tensors' sums (image pixels, regions, masks) and the target box."""
    out = {}
    for key, value in sorted(sample.items()):
        value = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        if value.dtype in (torch.float32, torch.float64):
            out[key] = [float(value.double().sum()), float(value.double().square().sum())]
            if key == "target":
                out[key] += value.tolist()
        else:
            out[key] = value.long().tolist() if value.numel() <= 16 else int(value.long().sum())
    return out


def draw(root):
    """{case: {infos, train samples of two epochs, batch order, eval batches, dropped report}}."""
    drawn = {}
    for name, flags in CASES.items():
        args = args_for(root, flags)
        tokenizer = build_tokenizer(args)
        train = build_dataset("train", args, tokenizer)
        val = build_dataset("val", args, tokenizer)
        samples = []
        for epoch in (0, 1):
            train.set_epoch(epoch)
            samples += [summary(train[i]) for i in range(len(train))]
        loader_train, loader_val = build_loaders(args, tokenizer)
        loader_train.batch_sampler.sampler.set_epoch(1)
        drawn[name] = {
            "train_infos": [plain(train.sample_info(i)) for i in range(len(train))],
            "val_infos": [plain(val.sample_info(i)) for i in range(len(val))],
            "train": samples, "val": [summary(val[i]) for i in range(len(val))],
            "order": [list(map(int, batch)) for batch in loader_train.batch_sampler],
            "eval_batches": [list(map(int, batch)) for batch in loader_val.batch_sampler],
            "targets": [int(train.n_targets(i)) for i in range(len(train))],
            "generalized": bool(train.is_generalized()), "has_masks": bool(train.has_masks()),
            "dropped": plain(getattr(train, "dropped", None)),
        }
    return drawn


def relative(value, root):
    """Paths under the data root written relative to it (the fixture does not know where the test's data lives)."""
    return json.loads(json.dumps(value).replace(str(root) + "/", "ROOT/"))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    make_data(root)
    return relative(draw(root), root)


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_samples_as_before(drawn, case):
    expected = json.loads(FIXTURE.read_text())[case]
    got = drawn[case]
    for key in ("train_infos", "val_infos", "order", "eval_batches", "targets", "generalized", "has_masks",
                "dropped"):
        assert got[key] == expected[key], key
    for part in ("train", "val"):
        assert len(got[part]) == len(expected[part])
        for n, (a, b) in enumerate(zip(got[part], expected[part])):
            assert a.keys() == b.keys(), (part, n)
            for key in a:
                # Tensor sums to a relative 1e-5: image resampling may differ in the last bit between CPUs.
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-4), (part, n, key)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        data_root = Path(folder)
        make_data(data_root)
        FIXTURE.write_text(json.dumps(relative(draw(data_root), data_root), separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
