"""Visual Genome's region descriptions into the JSONL dataset vg, on files in the release's layout written here:
the records, what is dropped and counted, the stream read over element boundaries, and its coco_id keeping RefCOCO's
evaluation images out of a mixed pre-training run."""
import json

import pytest
import torch
from helpers import tiny_train_args
from PIL import Image

from datasets import build_dataset, build_index, build_tokenizer
from datasets.sources import vg

COCO_DIR = "other/images/mscoco/images/train2014"
IMAGES = [  # image_data.json: VG id, folder, size, coco_id
    {"width": 100, "height": 80, "image_id": 1, "coco_id": 42, "flickr_id": None,
     "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg"},
    {"width": 60, "height": 50, "image_id": 2, "coco_id": None, "flickr_id": 7,
     "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg"},
]


def region(rid, image, phrase, x, y, w, h):
    return {"region_id": rid, "width": w, "height": h, "image_id": image, "phrase": phrase, "y": y, "x": x}


REGIONS = [
    {"regions": [region(1, 1, "a man  wearing\na hat ", 10, 10, 30, 40),
                 region(2, 1, "a man wearing a hat", 10, 10, 30, 40),      # the same after whitespace: a repeat
                 region(3, 1, "", 5, 5, 10, 10),                           # empty phrase
                 region(4, 1, "the sky", 0, 0, 100, 20),
                 region(5, 1, "flat thing", 20, 20, 0, 10),                # degenerate
                 region(6, 1, "off the edge", 90, 10, 20, 10)], "id": 1},  # outside the 100 x 80 image
    {"regions": [region(7, 2, "a red car", 1, 2, 30, 20), region(8, 2, "a tree", -3, 0, 10, 10),
                 region(9, 2, "a red car", 1, 2, 30, 21)], "id": 2},
]


@pytest.fixture
def release(tmp_path):
    folder = tmp_path / "vg_release"
    folder.mkdir()
    (folder / "image_data.json").write_text(json.dumps(IMAGES))
    (folder / "region_descriptions.json").write_text(json.dumps(REGIONS, indent=1))
    return folder


def convert(release, split_root, *extra):
    with pytest.raises(SystemExit) as done:
        build_index.main(["vg", "--vg_dir", str(release), "--split_root", str(split_root), *extra])
    return done.value.code


def test_regions_become_records_and_what_is_dropped_is_counted(release, tmp_path, capsys):
    assert convert(release, tmp_path / "split", "--image_prefix", "vg/") == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "split" / "vg" / "vg_train.jsonl").read_text().splitlines()]
    assert records == [
        {"image": "vg/VG_100K_2/1.jpg", "phrase": "a man wearing a hat", "box": [10, 10, 40, 50], "id": 1,
         "coco_id": 42},
        {"image": "vg/VG_100K_2/1.jpg", "phrase": "the sky", "box": [0, 0, 100, 20], "id": 4, "coco_id": 42},
        {"image": "vg/VG_100K/2.jpg", "phrase": "a red car", "box": [1, 2, 31, 22], "id": 7},
        {"image": "vg/VG_100K/2.jpg", "phrase": "a red car", "box": [1, 2, 31, 23], "id": 9},
    ]
    for line in ("images: 2 read, 2 in image_data.json (the release: 108,077)", "regions: 9 read", "4 kept",
                 "dropped: exact repeat (image, phrase, box): 1", "dropped: empty phrase: 1",
                 "dropped: degenerate box: 1", "dropped: box outside the image: 2", "0 problem(s)"):
        assert line in out, line


def test_the_stream_reads_across_any_chunk_boundary(release, monkeypatch):
    expected = json.loads((release / "region_descriptions.json").read_text())
    for size in (1, 7, 64):
        monkeypatch.setattr(vg, "READ_BYTES", size)
        assert list(vg.iter_json_array(release / "region_descriptions.json")) == expected


def test_a_cut_or_missing_release_fails_in_one_line(release, tmp_path, capsys):
    path = release / "region_descriptions.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(SystemExit) as done:
        build_index.main(["vg", "--vg_dir", str(release), "--split_root", str(tmp_path / "split")])
    assert "region_descriptions.json: " in str(done.value.code) and "download it again" in str(done.value.code)
    (release / "image_data.json").unlink()
    with pytest.raises(SystemExit) as done:
        build_index.main(["vg", "--vg_dir", str(release), "--split_root", str(tmp_path / "split")])
    assert str(done.value.code).startswith("error: ") and "image_data.json not found" in str(done.value.code)


def test_coco_ids_keep_refcoco_evaluation_images_out_of_pretraining(release, tmp_path):
    root = tmp_path / "data"
    for path in ("vg/VG_100K_2/1.jpg", "vg/VG_100K/2.jpg", f"{COCO_DIR}/COCO_train2014_000000000042.jpg",
                 f"{COCO_DIR}/COCO_train2014_000000000005.jpg"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (100, 80)).save(root / path)
    split_root = tmp_path / "split"
    assert convert(release, split_root, "--image_prefix", "vg/", "--data_root", str(root)) == 0
    (split_root / "unc").mkdir()
    train = [("COCO_train2014_000000000005.jpg", 2, [1, 2, 30, 20], "a dog", [])]
    torch.save(train, split_root / "unc" / "unc_train.pth")
    val = [("COCO_train2014_000000000042.jpg", 1, [1, 2, 30, 20], "the man", [])]
    torch.save(val, split_root / "unc" / "unc_val.pth")  # COCO image 42 is RefCOCO's val, and VG image 1
    args = tiny_train_args("--dataset", "unc,vg", "--data_root", root, "--split_root", split_root,
                           "--bert_model", "bert-base-uncased")
    mixed = build_dataset("train", args, build_tokenizer(args))
    assert mixed.dropped["vg"] == {"kept": 2, "dropped": 2, "dropped_images": ["vg/VG_100K_2/1.jpg"]}
    assert [mixed.sample_info(k)["phrase"] for k in range(len(mixed))] == ["a dog", "a red car", "a red car"]
    assert "coco_id" not in mixed.sample_info(1) and mixed.sample_info(1)["id"] == 7
    # Visual Genome has no val split: the mix validates on the others'.
    val = build_dataset("val", args, build_tokenizer(args))
    assert val.names == ["unc"] and len(val) == 1
