"""Build the TransVG/SegVG index files (<split_root>/<dataset>/<dataset>_<split>.pth) from public annotations.

    python -m datasets.build_index refer   --dataset unc|unc+|gref|gref_umd --refer_root DIR --split_root OUT
    python -m datasets.build_index referit --referit_dir DIR --split_root OUT
    python -m datasets.build_index flickr  --flickr_dir DIR --split_root OUT
    python -m datasets.build_index mdetr   --dataset unc|unc+|gref_umd --mdetr_dir DIR --split_root OUT
    python -m datasets.build_index exclude --refer_root DIR --out FILE
    python -m datasets.build_index csv     --csv FILE --dataset NAME --split SPLIT --split_root OUT [--data_root R]
    python -m datasets.build_index odvg    --odvg FILE --dataset NAME --split SPLIT --split_root OUT [--data_root R]
    python -m datasets.build_index jsonl   --dataset unc --split_root DIR --out_dataset NAME [--data_root R]
    python -m datasets.build_index grefcoco --grefcoco_dir DIR --split_root OUT [--data_root R]

The last four write the JSON-lines format of your own datasets (datasets/convert.py, docs/custom_data.md).

The rules are those of the generators of BCV-Uniandes/DMS that the published files descend from (docs/data.md):
one entry per sentence, REFER refs ordered by file_name, the COCO box as stored. Each split is written atomically;
afterwards the entries per split are printed next to the published sizes and the files are checked with
datasets.validate (index files only).
"""
import argparse
import io
import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from tqdm import tqdm

from utils.files import atomic_save, atomic_write, load_plain_pickle

from .convert import CONVERTERS, ConvertError, add_commands, write_and_check
from .grefcoco import add_grefcoco_command, build_grefcoco
from .grounding import CATALOG
from .validate import validate

PLACEHOLDER = "placeholder"  # the 5th field (a refer-parser2 parse in the published files) that no loader reads
COCO_IMAGE = "COCO_train2014_{:012d}.jpg"
REFER = {"unc": ("refcoco", "unc"), "unc+": ("refcoco+", "unc"), "gref": ("refcocog", "google"),
         "gref_umd": ("refcocog", "umd")}
MDETR = {"unc": "refcoco", "unc+": "refcoco+", "gref_umd": "refcocog"}
REFERIT_SKIPPED_IMAGES = {"19579.jpg", "17975.jpg", "19575.jpg"}  # as the original files (DMS process_referit)
SOURCES = {
    "refer": "REFER's data/ folder (github.com/lichengunc/refer; the refcoco, refcoco+ and refcocog zips, mirrors "
             "in refer issues #14, #23 and #26)",
    "referit": "ronghanghu/text_objseg, exp-referit/data/ on GitHub (the query and bbox JSON files)",
    "flickr": "BryanPlummer/flickr30k_entities on GitHub (annotations.zip and the split lists)",
    "mdetr": "MDETR's mdetr_annotations.tar.gz (Zenodo record 4729015)",
}
FLICKR_PHRASE = re.compile(r"\[/EN#(\d+)/\S+ ([^\]]+)\]")


class BuildError(Exception):
    """A missing or unconvertible source; the message names the file and the entry."""


def require(path, source):
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path} not found: it is published in {SOURCES[source]}")
    return path


def read_json(path, source):
    """json.load with a progress bar over the bytes (REFER's instances.json is ~100 MB)."""
    path = require(path, source)
    size = path.stat().st_size
    buffer = io.BytesIO()
    with path.open("rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=path.name,
                                   disable=size < 20 << 20) as bar:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            buffer.write(chunk)
            bar.update(len(chunk))
    try:
        return json.loads(buffer.getvalue())
    except ValueError as err:
        raise BuildError(f"{path} is not valid JSON ({err}); download it again from {SOURCES[source]}") from None


def read_refs(path):
    path = require(path, "refer")
    try:
        refs = load_plain_pickle(path)
    except Exception as err:
        raise BuildError(f"{path} cannot be read as REFER refs ({err}); download it again from "
                         f"{SOURCES['refer']}") from None
    if not isinstance(refs, list):
        raise BuildError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def write_splits(split_root, dataset, splits):
    """splits: {split: entries}; each file written atomically (a crash leaves no half-written split)."""
    folder = Path(split_root) / dataset
    for split, entries in splits.items():
        atomic_save(entries, folder / f"{dataset}_{split}.pth")
    print(f"wrote {', '.join(f'{dataset}_{s}.pth' for s in splits)} to {folder}")


def check(dataset, split_root, splits):
    """The counts next to the published sizes, then the validator on the written files (images not checked)."""
    return validate(dataset, "", split_root, list(splits), check_images=False)


# ----------------------------------------------------------------------------------------------------------------

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
            raise BuildError(f"{source}: ref {ref_id}: {missing}") from None
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
    instances = read_json(root / "instances.json", "refer")
    try:
        boxes = {ann["id"]: ann["bbox"] for ann in instances["annotations"]}
        segmentations = {ann["id"]: ann["segmentation"] for ann in instances["annotations"]} if opts.with_masks else {}
    except (KeyError, TypeError) as err:
        raise BuildError(f"{root / 'instances.json'}: annotations without {err}") from None
    splits = [s for s in CATALOG[opts.dataset]["splits"] if s != "trainval"]
    if opts.with_masks:
        built = {split: refer_records(refer_entries(refs, boxes, split, opts.phrase, refs_path), segmentations)
                 for split in splits}
        return write_and_check(built, opts.out_dataset, opts.split_root, "")
    built = {split: refer_entries(refs, boxes, split, opts.phrase, refs_path) for split in splits}
    write_splits(opts.split_root, opts.dataset, built)
    return check(opts.dataset, opts.split_root, built)


def build_mdetr(opts):
    name = MDETR[opts.dataset]
    built = {}
    for split in (s for s in CATALOG[opts.dataset]["splits"] if s != "trainval"):
        path = Path(opts.mdetr_dir) / f"finetune_{name}_{split}.json"
        data = read_json(path, "mdetr")
        try:
            annotations = {ann["image_id"]: ann for ann in data["annotations"]}
            entries = []
            for image in data["images"]:
                ann = annotations.get(image["id"])
                if ann is None:
                    raise BuildError(f"{path}: image entry {image['id']} has no annotation")
                entries.append((COCO_IMAGE.format(image["original_id"]), f"{ann['original_id']}.pth", ann["bbox"],
                                image["caption"], PLACEHOLDER))
        except (KeyError, TypeError) as err:
            raise BuildError(f"{path}: an image or annotation entry lacks {err}") from None
        built[split] = entries
    write_splits(opts.split_root, opts.dataset, built)
    return check(opts.dataset, opts.split_root, built)


def build_referit(opts):
    folder = Path(opts.referit_dir)
    bbox_path = folder / "referit_bbox.json"
    boxes = read_json(bbox_path, "referit")
    built = {}
    for split in ("train", "val", "trainval", "test"):
        path = folder / f"referit_query_{split}.json"
        entries = []
        for name, queries in read_json(path, "referit").items():
            image = name.split("_", 1)[0] + ".jpg"
            if image in REFERIT_SKIPPED_IMAGES:
                continue
            if name not in boxes:
                raise BuildError(f"{path}: query {name} has no box in {bbox_path}")
            try:
                box = [int(v) for v in boxes[name]]
            except (TypeError, ValueError):
                raise BuildError(f"{bbox_path}: box of {name} is not four integers: {boxes[name]!r}") from None
            entries += [(image, f"{name}.pth", box, query, PLACEHOLDER) for query in queries]
        built[split] = entries
    write_splits(opts.split_root, "referit", built)
    return check("referit", opts.split_root, built)


def flickr_boxes(path):
    """Annotations/<id>.xml -> {entity chain id: [x1, y1, x2, y2], the union of its boxes}."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as err:
        raise BuildError(f"{path} cannot be parsed: {err}") from None
    union = {}
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:  # nobndbox / scene objects have no box
            continue
        try:
            coords = [int(float(box.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise BuildError(f"{path}: an object of {[n.text for n in obj.iter('name')]} has a malformed "
                             f"bndbox") from None
        for name in obj.iter("name"):
            old = union.get(name.text)
            union[name.text] = coords if old is None else [min(old[0], coords[0]), min(old[1], coords[1]),
                                                           max(old[2], coords[2]), max(old[3], coords[3])]
    return union


def build_flickr(opts):
    folder = Path(opts.flickr_dir)
    built = {}
    for split in ("train", "val", "test"):
        ids = [line.strip() for line in require(folder / f"{split}.txt", "flickr").read_text().splitlines()
               if line.strip()]
        entries = []
        for image_id in tqdm(ids, desc=f"flickr {split}", unit="img", disable=len(ids) < 2000):
            boxes = flickr_boxes(require(folder / "Annotations" / f"{image_id}.xml", "flickr"))
            sentences = require(folder / "Sentences" / f"{image_id}.txt", "flickr").read_text(encoding="utf-8")
            for line in sentences.splitlines():
                for chain, phrase in FLICKR_PHRASE.findall(line):
                    if chain in boxes:
                        entries.append((f"{image_id}.jpg", list(boxes[chain]), phrase))
        built[split] = entries
    write_splits(opts.split_root, "flickr", built)
    return check("flickr", opts.split_root, built)


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
                    raise BuildError(f"{path}: ref {ref.get('ref_id', '?')} has no image_id")
                ids.add(int(ref["image_id"]))
    atomic_write(opts.out, lambda f: f.write("".join(f"{i}\n" for i in sorted(ids)).encode()))
    print(f"{len(ids)} COCO train2014 image ids used by val/test splits ({', '.join(str(p) for p in files)}) "
          f"written to {opts.out}")
    return []


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m datasets.build_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
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
    referit = commands.add_parser("referit", help="ReferItGame from text_objseg's query and bbox JSON files")
    referit.add_argument("--referit_dir", required=True, help="folder with referit_query_*.json, referit_bbox.json")
    flickr = commands.add_parser("flickr", help="Flickr30k Entities: Annotations/, Sentences/, train/val/test.txt")
    flickr.add_argument("--flickr_dir", required=True,
                        help="Flickr30k Entities folder: Annotations/, Sentences/, train.txt, val.txt, test.txt")
    mdetr = commands.add_parser("mdetr", help="RefCOCO / RefCOCO+ / RefCOCOg (umd) from MDETR's finetune_*.json")
    mdetr.add_argument("--dataset", required=True, choices=sorted(MDETR), help="index to build")
    mdetr.add_argument("--mdetr_dir", required=True, help="folder with finetune_<refcoco|refcoco+|refcocog>_*.json")
    for command in (refer, referit, flickr, mdetr):
        command.add_argument("--split_root", required=True, help="writes <split_root>/<dataset>/<dataset>_<split>.pth")
    exclude = commands.add_parser("exclude", help="COCO image ids of the val/test splits (to keep out of detector "
                                                  "pre-training)")
    exclude.add_argument("--refer_root", required=True, help="REFER's data/ folder (refcoco/, refcoco+/, refcocog/)")
    exclude.add_argument("--out", required=True, help="text file: one image id per line")
    add_commands(commands)
    add_grefcoco_command(commands)
    return parser


BUILDERS = {"refer": build_refer, "referit": build_referit, "flickr": build_flickr, "mdetr": build_mdetr,
            "exclude": build_exclude, "grefcoco": build_grefcoco, **CONVERTERS}


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.command == "refer" and opts.with_masks:
        opts.out_dataset = opts.out_dataset or f"{opts.dataset.replace('+', 'plus')}_masks"
    try:
        problems = BUILDERS[opts.command](opts)
    except (BuildError, ConvertError) as err:
        sys.exit(f"error: {err}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
