"""datasets.build_index on small sources written here in each source's exact format; the built tuples are compared
with tuples written out by hand, then loaded through GroundingDataset and checked by the validator."""
import json
import pickle
import re

import pytest
import torch

from datasets import build_index
from datasets.grounding import GroundingDataset
from datasets.validate import validate


def ref(ref_id, ann_id, image_id, split, sentences, suffix):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{suffix}.jpg", "sent_ids": list(range(len(sentences))),
            "sentences": [{"tokens": sent.split(), "raw": raw, "sent_id": k, "sent": sent}
                          for k, (raw, sent) in enumerate(sentences)]}


def rectangle(box):
    x, y, w, h = box
    return [x, y, x + w, y, x + w, y + h, x, y + h]


@pytest.fixture
def refer_root(tmp_path):
    root = tmp_path / "refer_data"
    refs = {
        "refcoco/refs(unc).p": [
            ref(7, 1719310, 581857, "train", [("THE LADY WITH THE BLUE SHIRT", "the lady with the blue shirt"),
                                              ("lady w back to us", "lady with back to us")], 16),
            ref(3, 482127, 839, "train", [("guy flopping around on the right", "guy flopping around on the right")], 2),
            ref(5, 1000, 839, "val", [("Left dog", "left dog")], 1),
            ref(6, 1001, 42, "testA", [("man", "man"), ("the man", "the man"), ("a man!", "a man")], 9),
            ref(8, 1002, 43, "testB", [("car", "car")], 4),
        ],
        "refcoco+/refs(unc).p": [ref(1, 1000, 839, "testB", [("dog", "dog")], 1)],
        "refcocog/refs(google).p": [ref(2, 1001, 42, "val", [("a man", "a man")], 9),
                                    ref(4, 1002, 43, "train", [("car", "car")], 4)],
        "refcocog/refs(umd).p": [ref(2, 1001, 42, "test", [("a man", "a man")], 9),
                                 ref(9, 482127, 839, "val", [("guy", "guy")], 2)],
    }
    annotations = [{"id": 1719310, "image_id": 581857, "bbox": [103.93, 299.99, 134.22, 177.42]},
                   {"id": 482127, "image_id": 839, "bbox": [303.58, 69.03, 293.29, 425.79]},
                   {"id": 1000, "image_id": 839, "bbox": [1.5, 2.25, 30.0, 40.75]},
                   {"id": 1001, "image_id": 42, "bbox": [10, 20, 30, 40]},
                   {"id": 1002, "image_id": 43, "bbox": [5.0, 6.0, 7.0, 8.0]}]
    for name, content in refs.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(content, protocol=2))
        # Each object's segmentation: its box as a rectangle polygon (the mask tests rasterise it).
        instances = {"images": [], "categories": [], "annotations": [
            dict(a, area=1.0, iscrowd=0, category_id=1, segmentation=[rectangle(a["bbox"])]) for a in annotations]}
        (path.parent / "instances.json").write_text(json.dumps(instances))
    return root


def load(split_root, dataset, split):
    return torch.load(split_root / dataset / f"{dataset}_{split}.pth", weights_only=True)


def test_refer_builds_the_published_tuples(refer_root, tmp_path):
    out = tmp_path / "split"
    with pytest.raises(SystemExit) as done:
        build_index.main(["refer", "--dataset", "unc", "--refer_root", str(refer_root), "--split_root", str(out)])
    assert done.value.code == 0
    # Refs ordered by file_name (COCO_..._000000000839_2 before ..._000000581857_16), sentences in their order.
    assert load(out, "unc", "train") == [
        ("COCO_train2014_000000000839.jpg", "482127.pth", [303.58, 69.03, 293.29, 425.79],
         "guy flopping around on the right", "placeholder"),
        ("COCO_train2014_000000581857.jpg", "1719310.pth", [103.93, 299.99, 134.22, 177.42],
         "the lady with the blue shirt", "placeholder"),
        ("COCO_train2014_000000581857.jpg", "1719310.pth", [103.93, 299.99, 134.22, 177.42],
         "lady with back to us", "placeholder"),
    ]
    assert load(out, "unc", "val") == [("COCO_train2014_000000000839.jpg", "1000.pth", [1.5, 2.25, 30.0, 40.75],
                                        "left dog", "placeholder")]
    assert [e[3] for e in load(out, "unc", "testA")] == ["man", "the man", "a man"]
    assert load(out, "unc", "testB") == [("COCO_train2014_000000000043.jpg", "1002.pth", [5.0, 6.0, 7.0, 8.0], "car",
                                          "placeholder")]
    assert not (out / "unc" / "unc_trainval.pth").exists()  # the loader reads train + val
    dataset = GroundingDataset("images", out, "unc", "trainval", transform=None, tokenizer=None, max_query_len=20)
    assert len(dataset) == 4 and dataset.sample_info(3)["box"] == [1.0, 2.0, 31.0, 42.0]  # ints, then xyxy


def test_refer_raw_phrases_and_the_umd_split(refer_root, tmp_path):
    out = tmp_path / "split"
    with pytest.raises(SystemExit):
        build_index.main(["refer", "--dataset", "unc", "--refer_root", str(refer_root), "--split_root", str(out),
                          "--phrase", "raw"])
    assert [e[3] for e in load(out, "unc", "train")] == ["guy flopping around on the right",
                                                         "THE LADY WITH THE BLUE SHIRT", "lady w back to us"]
    with pytest.raises(SystemExit):
        build_index.main(["refer", "--dataset", "gref_umd", "--refer_root", str(refer_root), "--split_root", str(out)])
    assert load(out, "gref_umd", "train") == []
    assert load(out, "gref_umd", "test") == [("COCO_train2014_000000000042.jpg", "1001.pth", [10, 20, 30, 40],
                                              "a man", "placeholder")]
    assert validate("gref_umd", "", out, check_images=False) == []


def test_mdetr_builds_the_same_tuples(tmp_path):
    folder = tmp_path / "mdetr"
    folder.mkdir()
    for split in ("train", "val", "testA", "testB"):
        images = [{"id": 0, "file_name": "COCO_train2014_000000581857.jpg", "original_id": 581857, "height": 480,
                   "width": 640, "caption": f"the lady {split}", "dataset_name": "refcoco", "tokens_negative": []},
                  {"id": 1, "file_name": "COCO_train2014_000000000839.jpg", "original_id": 839, "height": 480,
                   "width": 640, "caption": "guy", "dataset_name": "refcoco", "tokens_negative": []}]
        annotations = [{"id": 10, "image_id": 1, "original_id": 482127, "bbox": [303.58, 69.03, 293.29, 425.79],
                        "category_id": 1, "area": 1.0, "iscrowd": 0, "tokens_positive": [[0, 3]]},
                       {"id": 11, "image_id": 0, "original_id": 1719310, "bbox": [103.93, 299.99, 134.22, 177.42],
                        "category_id": 1, "area": 1.0, "iscrowd": 0, "tokens_positive": [[0, 3]]}]
        (folder / f"finetune_refcoco_{split}.json").write_text(json.dumps({"images": images,
                                                                           "annotations": annotations}))
    out = tmp_path / "split"
    with pytest.raises(SystemExit) as done:
        build_index.main(["mdetr", "--dataset", "unc", "--mdetr_dir", str(folder), "--split_root", str(out)])
    assert done.value.code == 0
    assert load(out, "unc", "testA") == [
        ("COCO_train2014_000000581857.jpg", "1719310.pth", [103.93, 299.99, 134.22, 177.42], "the lady testA",
         "placeholder"),
        ("COCO_train2014_000000000839.jpg", "482127.pth", [303.58, 69.03, 293.29, 425.79], "guy", "placeholder")]


def test_referit_skips_the_three_images_and_writes_trainval(tmp_path):
    folder = tmp_path / "referit"
    folder.mkdir()
    boxes = {"9807_13": [241, 249, 313, 291], "19059_10": [0, 255, 28, 310], "19579_1": [1, 1, 5, 5],
             "17975_2": [1, 1, 5, 5]}
    (folder / "referit_bbox.json").write_text(json.dumps(boxes))
    queries = {"train": {"9807_13": ["desk middle left of pink hat", "desk"], "19579_1": ["skipped"]},
               "val": {"19059_10": ["small tree on left on screen"]}, "test": {"17975_2": ["skipped too"]}}
    queries["trainval"] = {**queries["train"], **queries["val"]}
    for split, content in queries.items():
        (folder / f"referit_query_{split}.json").write_text(json.dumps(content))
    out = tmp_path / "split"
    with pytest.raises(SystemExit):
        build_index.main(["referit", "--referit_dir", str(folder), "--split_root", str(out)])
    assert load(out, "referit", "train") == [
        ("9807.jpg", "9807_13.pth", [241, 249, 313, 291], "desk middle left of pink hat", "placeholder"),
        ("9807.jpg", "9807_13.pth", [241, 249, 313, 291], "desk", "placeholder")]
    assert load(out, "referit", "val") == [("19059.jpg", "19059_10.pth", [0, 255, 28, 310],
                                            "small tree on left on screen", "placeholder")]
    assert len(load(out, "referit", "trainval")) == 3 and load(out, "referit", "test") == []
    assert validate("referit", "", out, check_images=False) == []


FLICKR_XML = """<annotation><filename>{id}.jpg</filename><size><width>500</width><height>375</height><depth>3</depth>
</size>
<object><name>101</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>50</xmax><ymax>80</ymax></bndbox></object>
<object><name>101</name><name>102</name><bndbox><xmin>40</xmin><ymin>5</ymin><xmax>90</xmax><ymax>60</ymax></bndbox>
</object>
<object><name>103</name><nobndbox>1</nobndbox></object>
<object><name>104</name><scene>1</scene><nobndbox>1</nobndbox></object>
</annotation>"""
FLICKR_SENTENCES = ("[/EN#101/people Two men] stand next to [/EN#103/bodyparts their hands] .\n"
                    "[/EN#102/people A man] in [/EN#104/scene a park] waves to [/EN#0/notvisual someone] .\n")


def test_flickr_unions_a_phrases_boxes_and_skips_phrases_without_one(tmp_path):
    folder = tmp_path / "flickr30k_entities"
    (folder / "Annotations").mkdir(parents=True)
    (folder / "Sentences").mkdir()
    for image_id in ("1000092795", "10002456"):
        (folder / "Annotations" / f"{image_id}.xml").write_text(FLICKR_XML.format(id=image_id))
        (folder / "Sentences" / f"{image_id}.txt").write_text(FLICKR_SENTENCES)
    (folder / "train.txt").write_text("1000092795\n")
    (folder / "val.txt").write_text("10002456\n")
    (folder / "test.txt").write_text("")
    out = tmp_path / "split"
    with pytest.raises(SystemExit):
        build_index.main(["flickr", "--flickr_dir", str(folder), "--split_root", str(out)])
    assert load(out, "flickr", "train") == [("1000092795.jpg", [10, 5, 90, 80], "Two men"),
                                            ("1000092795.jpg", [40, 5, 90, 60], "A man")]
    assert load(out, "flickr", "val")[0] == ("10002456.jpg", [10, 5, 90, 80], "Two men")
    assert validate("flickr", "", out, check_images=False) == []


def test_exclude_lists_val_and_test_images(refer_root, tmp_path):
    out = tmp_path / "exclude.txt"
    with pytest.raises(SystemExit) as done:
        build_index.main(["exclude", "--refer_root", str(refer_root), "--out", str(out)])
    assert done.value.code == 0
    assert out.read_text() == "42\n43\n839\n"


@pytest.mark.parametrize("remove, message", [
    ("refcoco/refs(unc).p", r"refcoco/refs\(unc\)\.p not found: it is published in REFER"),
    ("refcoco/instances.json", r"refcoco/instances\.json not found: it is published in REFER"),
])
def test_missing_sources_name_the_path_and_where_to_get_it(refer_root, tmp_path, capsys, remove, message):
    (refer_root / remove).unlink()
    with pytest.raises(SystemExit) as done:
        build_index.main(["refer", "--dataset", "unc", "--refer_root", str(refer_root), "--split_root",
                          str(tmp_path / "split")])
    assert re.search(message, str(done.value.code))
    assert not (tmp_path / "split" / "unc").exists() or not list((tmp_path / "split" / "unc").iterdir())


def test_unconvertible_entries_name_the_file_and_the_ref(refer_root, tmp_path):
    path = refer_root / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    refs[1]["ann_id"] = 999  # not in instances.json
    path.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(SystemExit) as done:
        build_index.main(["refer", "--dataset", "unc", "--refer_root", str(refer_root), "--split_root",
                          str(tmp_path / "split")])
    assert "refs(unc).p: ref 3: annotation 999 is not in instances.json" in str(done.value.code)
    assert not (tmp_path / "split" / "unc").exists()


def test_refs_holding_objects_are_refused(refer_root, tmp_path):
    (refer_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([GroundingDataset], protocol=2))
    with pytest.raises(SystemExit) as done:
        build_index.main(["refer", "--dataset", "unc", "--refer_root", str(refer_root), "--split_root",
                          str(tmp_path / "split")])
    assert "refusing to load datasets.grounding.GroundingDataset" in str(done.value.code)
