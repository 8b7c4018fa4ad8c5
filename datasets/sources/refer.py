"""RefCOCO, RefCOCO+ and RefCOCOg index files (<split_root>/<dataset>/<dataset>_<split>.pth) from REFER's refs and
instances.json, or from MDETR's annotations; the COCO ids of their evaluation images.

The rules are those of the generators of BCV-Uniandes/DMS that the published files descend from (docs/data.md):
one entry per sentence, REFER refs ordered by file_name, the COCO box as stored.
"""
from pathlib import Path

from utils.files import atomic_write, load_plain_pickle

from ..catalog import CATALOG
from .common import ConvertError, read_json, require, write_and_check, write_splits

PLACEHOLDER = "placeholder"  # the 5th field (a refer-parser2 parse in the published files) that no loader reads
COCO_IMAGE = "COCO_train2014_{:012d}.jpg"
REFER = {"unc": ("refcoco", "unc"), "unc+": ("refcoco+", "unc"), "gref": ("refcocog", "google"),
         "gref_umd": ("refcocog", "umd")}
MDETR = {"unc": "refcoco", "unc+": "refcoco+", "gref_umd": "refcocog"}
PUBLISHED = {
    "refer": "REFER's data/ folder (github.com/lichengunc/refer; the refcoco, refcoco+ and refcocog zips, mirrors "
             "in refer issues #14, #23 and #26)",
    "mdetr": "MDETR's mdetr_annotations.tar.gz (Zenodo record 4729015)",
}


def read_refs(path):
    path = require(path, PUBLISHED["refer"])
    try:
        refs = load_plain_pickle(path)
    except Exception as err:
        raise ConvertError(f"{path} cannot be read as REFER refs ({err}); download it again from "
                           f"{PUBLISHED['refer']}") from None
    if not isinstance(refs, list):
        raise ConvertError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def refer_entries(refs, boxes, split, phrase, source):
    entries = []
    chosen = sorted((ref for ref in refs if ref.get("split") == split), key=lambda ref: ref["file_name"])
    for ref in chosen:
        try:
            ann_id, image_id = ref["ann_id"], ref["image_id"]
            box = boxes[ann_id]
            for sentence in ref["sentences"]:
                entries.append((COCO_IMAGE.format(image_id), f"{ann_id}.pth", box, sentence[phrase], PLACEHOLDER))
        except KeyError as err:
            ref_id = ref.get("ref_id", "?")
            missing = (f"annotation {ref.get('ann_id')} is not in instances.json" if err.args[0] == ref.get("ann_id")
                       else f"no field {err}")
            raise ConvertError(f"{source}: ref {ref_id}: {missing}") from None
    return entries


def refer_records(entries, segmentations):
    """Index tuples -> JSONL records with the objects' COCO segmentations as masks (boxes x1, y1, x2, y2)."""
    image_dir = CATALOG["unc"]["image_dir"]
    records = []
    for file_name, ann_file, (x, y, w, h), phrase, _ in entries:
        ann_id = int(ann_file.removesuffix(".pth"))
        records.append({"image": f"{image_dir}/{file_name}", "phrase": phrase, "box": [x, y, x + w, y + h],
                        "id": ann_id, "mask": segmentations[ann_id]})
    return records


def build_refer(opts):
    folder, split_by = REFER[opts.dataset]
    root = Path(opts.refer_root) / folder
    refs_path = root / f"refs({split_by}).p"
    refs = read_refs(refs_path)
    instances = read_json(root / "instances.json", PUBLISHED["refer"])
    try:
        boxes = {ann["id"]: ann["bbox"] for ann in instances["annotations"]}
        segmentations = {ann["id"]: ann["segmentation"] for ann in instances["annotations"]} if opts.with_masks else {}
    except (KeyError, TypeError) as err:
        raise ConvertError(f"{root / 'instances.json'}: annotations without {err}") from None
    splits = [s for s in CATALOG[opts.dataset]["splits"] if s != "trainval"]
    if opts.with_masks:
        built = {split: refer_records(refer_entries(refs, boxes, split, opts.phrase, refs_path), segmentations)
                 for split in splits}
        return write_and_check(built, opts.out_dataset, opts.split_root, "")
    built = {split: refer_entries(refs, boxes, split, opts.phrase, refs_path) for split in splits}
    return write_splits(opts.split_root, opts.dataset, built)


def build_mdetr(opts):
    name = MDETR[opts.dataset]
    built = {}
    for split in (s for s in CATALOG[opts.dataset]["splits"] if s != "trainval"):
        path = Path(opts.mdetr_dir) / f"finetune_{name}_{split}.json"
        data = read_json(path, PUBLISHED["mdetr"])
        try:
            annotations = {ann["image_id"]: ann for ann in data["annotations"]}
            entries = []
            for image in data["images"]:
                ann = annotations.get(image["id"])
                if ann is None:
                    raise ConvertError(f"{path}: image entry {image['id']} has no annotation")
                entries.append((COCO_IMAGE.format(image["original_id"]), f"{ann['original_id']}.pth", ann["bbox"],
                                image["caption"], PLACEHOLDER))
        except (KeyError, TypeError) as err:
            raise ConvertError(f"{path}: an image or annotation entry lacks {err}") from None
        built[split] = entries
    return write_splits(opts.split_root, opts.dataset, built)


def build_exclude(opts):
    """COCO train2014 image ids in any val/test split of RefCOCO, RefCOCO+ and RefCOCOg (google and umd)."""
    root = Path(opts.refer_root)
    files = [root / "refcoco" / "refs(unc).p", root / "refcoco+" / "refs(unc).p", root / "refcocog" / "refs(google).p",
             root / "refcocog" / "refs(umd).p"]
    files += [root / "refcoco" / "refs(google).p"] if (root / "refcoco" / "refs(google).p").is_file() else []
    ids = set()
    for path in files:
        for ref in read_refs(path):
            if ref.get("split") != "train":
                if "image_id" not in ref:
                    raise ConvertError(f"{path}: ref {ref.get('ref_id', '?')} has no image_id")
                ids.add(int(ref["image_id"]))
    atomic_write(opts.out, lambda f: f.write("".join(f"{i}\n" for i in sorted(ids)).encode()))
    print(f"{len(ids)} COCO train2014 image ids used by val/test splits ({', '.join(str(p) for p in files)}) "
          f"written to {opts.out}")
    return []


def add_refer_commands(commands):
    refer = commands.add_parser("refer", help="RefCOCO / RefCOCO+ / RefCOCOg from REFER's refs and instances.json")
    refer.add_argument("--dataset", required=True, choices=sorted(REFER), help="index to build")
    refer.add_argument("--refer_root", required=True, help="REFER's data/ folder (refcoco/, refcoco+/, refcocog/)")
    refer.add_argument("--phrase", default="sent", choices=["sent", "raw"],
                       help="sentence field: 'sent' (normalised; most likely what the published files hold) or "
                            "'raw' (as typed)")
    refer.add_argument("--with_masks", action="store_true",
                       help="write a JSONL dataset (--out_dataset) whose records carry the objects' COCO "
                            "segmentations as masks, for the mask metrics; the .pth index files are left alone")
    refer.add_argument("--out_dataset", default="",
                       help="with --with_masks: the JSONL dataset's name (default: <dataset>_masks)")
    mdetr = commands.add_parser("mdetr", help="RefCOCO / RefCOCO+ / RefCOCOg (umd) from MDETR's finetune_*.json")
    mdetr.add_argument("--dataset", required=True, choices=sorted(MDETR), help="index to build")
    mdetr.add_argument("--mdetr_dir", required=True, help="folder with finetune_<refcoco|refcoco+|refcocog>_*.json")
    for command in (refer, mdetr):
        command.add_argument("--split_root", required=True, help="writes <split_root>/<dataset>/<dataset>_<split>.pth")
    exclude = commands.add_parser("exclude", help="COCO image ids of the val/test splits (to keep out of detector "
                                                  "pre-training)")
    exclude.add_argument("--refer_root", required=True, help="REFER's data/ folder (refcoco/, refcoco+/, refcocog/)")
    exclude.add_argument("--out", required=True, help="text file: one image id per line")
