"""gRefCOCO end to end on a fixture in the published layout (grefs(unc).json, instances.json): the converter's counts,
the validator, a training run with the presence head, and eval.py's GRES / GREC figures recomputed by hand from its
prediction records and masks."""
import json
import pickle

import numpy as np
import pytest
from helpers import TINY_TRAIN
from PIL import Image
from pycocotools import mask as coco_mask

import eval as eval_script
import train
from datasets import build_index
from datasets.mixed import evaluation_images, image_key
from datasets.validate import validate

SPLITS = ("train", "val", "testA", "testB")


def polygon(x, y, w, h):
    return [[x, y, x, y + h, x + w, y + h, x + w, y]]


@pytest.fixture(scope="module")
def grefcoco(tmp_path_factory):
    """Per split 3 images; each image has objects 1 and 2 (and a crowd, 3), and refs: one target, both objects, no
    target ([-1]), and one naming the crowd only (skipped). Sentences: 2, 1, 2, 1."""
    root = tmp_path_factory.mktemp("grefcoco")
    images_dir = root / "train2014"
    images_dir.mkdir()
    images, annotations, refs = [], [], []
    rng = np.random.default_rng(0)
    for s, split in enumerate(SPLITS):
        for k in range(3):
            image_id = 100 * s + k + 1
            name = f"COCO_train2014_{image_id:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images_dir / name)
            images.append({"id": image_id, "file_name": name, "height": 40, "width": 48})
            for a, (x, y, w, h, crowd) in enumerate([(2, 3, 10, 12, 0), (25, 10, 15, 20, 0), (5, 20, 8, 8, 1)]):
                annotations.append({"id": image_id * 10 + a, "image_id": image_id, "bbox": [x, y, w, h],
                                    "segmentation": polygon(x, y, w, h), "iscrowd": crowd, "area": w * h})
            base = {"image_id": image_id, "split": split, "file_name": name}
            first, second, crowd = image_id * 10, image_id * 10 + 1, image_id * 10 + 2
            refs += [{**base, "ref_id": image_id * 10, "ann_id": [first],
                      "sentences": [{"sent": "the left thing"}, {"sent": "small one"}]},
                     {**base, "ref_id": image_id * 10 + 1, "ann_id": [first, second],
                      "sentences": [{"sent": "both things"}]},
                     {**base, "ref_id": image_id * 10 + 2, "ann_id": [-1], "no_target": True,
                      "sentences": [{"sent": "the dog"}, {"sent": "a purple cat"}]},
                     {**base, "ref_id": image_id * 10 + 3, "ann_id": [crowd], "sentences": [{"sent": "the crowd"}]}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (root / "grefs(unc).json").write_text(json.dumps(refs))
    return root


def test_converter_counts_validator_training_and_metrics(grefcoco, tmp_path, capsys):
    split_root = tmp_path / "split"
    with pytest.raises(SystemExit) as exit_info:
        build_index.main(["grefcoco", "--grefcoco_dir", str(grefcoco), "--split_root", str(split_root),
                          "--data_root", str(grefcoco / "train2014")])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for split in SPLITS:  # 3 images x (2 one-target + 1 several + 2 no-target sentences); the crowd ref skipped
        assert f"  {split:<8}{15:>10}{6:>10}{6:>10}{3:>10}{3:>10}" in out
        records = [json.loads(line) for line in (split_root / "grefcoco" / f"grefcoco_{split}.jsonl").open()]
        assert len(records) == 15
    first = records[0]
    assert first["image"].startswith("COCO_train2014_") and first["boxes"] == [[2, 3, 12, 15]]
    several = next(r for r in records if len(r["boxes"]) == 2)
    assert several["boxes"][1] == [25, 10, 40, 30] and len(several["masks"]) == 2
    assert all("masks" not in r for r in records if not r["boxes"])
    assert validate("grefcoco", str(grefcoco / "train2014"), str(split_root)) == []
    # The release's pickled refs read the same (plain data only: a class in the file is refused).
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "instances.json").write_bytes((grefcoco / "instances.json").read_bytes())
    (pickled / "grefs(unc).p").write_bytes(pickle.dumps(json.loads((grefcoco / "grefs(unc).json").read_text())))
    with pytest.raises(SystemExit):
        build_index.main(["grefcoco", "--grefcoco_dir", str(pickled), "--split_root", str(tmp_path / "from_p")])
    assert (tmp_path / "from_p/grefcoco/grefcoco_val.jsonl").read_text() == \
        (split_root / "grefcoco/grefcoco_val.jsonl").read_text()
    (pickled / "grefs(unc).p").write_bytes(pickle.dumps([ValueError("a class, not plain data")]))
    with pytest.raises(SystemExit, match="cannot be read"):
        build_index.main(["grefcoco", "--grefcoco_dir", str(pickled), "--split_root", str(tmp_path / "bad")])
    # Mixed with RefCOCO, gRefCOCO's evaluation images stay out of training (they are COCO train2014 images too).
    held = evaluation_images(split_root, "coco")
    assert {image_key(f"COCO_train2014_{100 * s + k + 1:012d}.jpg") for s in (1, 2, 3) for k in range(3)} == set(held)
    assert held[image_key("COCO_train2014_000000000101.jpg")] == "grefcoco/val"

    run = tmp_path / "run"
    train.main(train.get_args_parser().parse_args(TINY_TRAIN + [
        "--dataset", "grefcoco", "--data_root", str(grefcoco / "train2014"), "--split_root", str(split_root),
        "--output_dir", str(run), "--epochs", "1", "--presence_head", "--mask_head", "fine"]))
    predictions = tmp_path / "val.jsonl"
    stats = eval_script.main(eval_script.get_args_parser().parse_args([
        "--checkpoint", str(run / "checkpoint_latest.pth"), "--eval_set", "val", "--device", "cpu",
        "--num_workers", "0", "--save_predictions", str(predictions), "--save_masks", "--boxes_from_mask",
        "--output_dir", str(tmp_path / "eval")]))
    assert stats["count"] == 6 and stats["phrases"] == 15
    assert {k: s["count"] for k, s in stats["by_kind"].items()} == {"none": 6, "one": 6, "several": 3}
    written = json.loads((tmp_path / "eval" / "eval_grefcoco_val.json").read_text())
    assert written["giou"] == stats["giou"] and written["grec_match"] == "giou"

    # GRES by hand from the records: the saved mask (drawn whether found or not) against the union of the targets.
    val = [json.loads(line) for line in (split_root / "grefcoco" / "grefcoco_val.jsonl").open()]
    records = [json.loads(line) for line in predictions.open()]
    assert len(records) == 15
    iou_sum, inter_sum, union_sum, tp, fn, fp, tn = 0.0, 0, 0, 0, 0, 0, 0
    for record, truth in zip(records, val):
        assert record["phrase"] == truth["phrase"] and record["found"] == (record["present"] >= 0.5)
        pred = np.asarray(Image.open(record["mask"])) > 0
        gt = np.zeros((40, 48), bool)
        for segmentation in truth.get("masks", []):
            gt |= coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(segmentation, 40, 48))).astype(bool)
        inter, union = int((pred & gt).sum()), int((pred | gt).sum())
        if not truth["boxes"]:
            if record["found"]:
                fn, union_sum = fn + 1, union_sum + union
            else:
                tp, iou_sum = tp + 1, iou_sum + 1
            continue
        if record["found"]:
            tn += 1
        else:
            fp, inter = fp + 1, 0
        iou_sum += inter / union if union else 0
        inter_sum, union_sum = inter_sum + inter, union_sum + union
    assert stats["giou"] == pytest.approx(iou_sum / 15)
    assert stats["ciou"] == pytest.approx(inter_sum / union_sum)
    assert stats["n_acc"] == pytest.approx(tp / (tp + fn)) and stats["t_acc"] == pytest.approx(tn / (tn + fp))
    assert all("boxes" in r for r in records)

    summary = eval_script.main(eval_script.get_args_parser().parse_args([
        "--checkpoint", str(run / "checkpoint_latest.pth"), "--eval_sets", "grefcoco:val,grefcoco:testA",
        "--device", "cpu", "--num_workers", "0", "--output_dir", str(tmp_path / "sets")]))
    assert summary["grefcoco:val"]["giou"] == pytest.approx(stats["giou"])
    assert summary["grefcoco:testA"]["phrases"] == 15 and "| gIoU | N-acc | T-acc |" in capsys.readouterr().out
