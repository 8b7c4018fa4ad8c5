"""gRefCOCO (Liu, Ding et al., CVPR 2023: phrases with no target, one or several) into the JSON-lines format:

    python -m datasets.build_index grefcoco --grefcoco_dir DIR --split_root OUT [--image_prefix P] [--data_root R]

reads DIR/grefs(unc).json (or grefs(unc).p) and DIR/instances.json as ReLA's loader does: one record per sentence; a
ref whose ann_id is [-1] has no target ("boxes": []), several ids are several targets; crowd annotations are left out
of a ref's targets (a ref left with none is skipped and counted: it is not a no-target phrase). Boxes are COCO's
x, y, w, h written as x1, y1, x2, y2, masks the annotations' segmentations as stored. Writes
OUT/grefcoco/grefcoco_<split>.jsonl for train, val, testA and testB, image paths relative to the COCO train2014
folder (give that folder as --data_root), or with --image_prefix prepended (mixing with the built-in RefCOCO, whose
images are under other/images/mscoco/images/train2014 of --data_root).
"""
import json
from collections import Counter
from pathlib import Path

from utils.files import load_plain_pickle

from ..records import KINDS, target_kind
from .common import ConvertError, write_and_check

NAME = "grefcoco"
SPLITS = ("train", "val", "testA", "testB")
SOURCE = "the gRefCOCO release (henghuiding/gRefCOCO on GitHub: grefs(unc).json and instances.json)"
# The paper's figures for the whole dataset (all splits): expressions, and of them several-target and no-target ones.
PUBLISHED = {"phrases": 278232, "several": 80022, "none": 32202}


def read_grefs(folder):
    """The refs of grefs(unc).json, or of grefs(unc).p."""
    for name in ("grefs(unc).json", "grefs(unc).p"):
        path = Path(folder) / name
        if path.is_file():
            try:
                refs = json.loads(path.read_text()) if path.suffix == ".json" else load_plain_pickle(path)
            except Exception as err:
                raise ConvertError(f"{path} cannot be read ({err}); download it again from {SOURCE}") from None
            if not isinstance(refs, list):
                raise ConvertError(f"{path}: expected a list of refs, got {type(refs).__name__}")
            return refs, path
    raise ConvertError(f"{Path(folder) / 'grefs(unc).json'} (or .p) not found: it is published in {SOURCE}")


def read_annotations(folder):
    """{annotation id: annotation} and {image id: file name} of instances.json."""
    path = Path(folder) / "instances.json"
    if not path.is_file():
        raise ConvertError(f"{path} not found: it is published in {SOURCE}")
    try:
        instances = json.loads(path.read_text())
        annotations = {ann["id"]: ann for ann in instances["annotations"]}
        images = {image["id"]: image["file_name"] for image in instances.get("images", [])}
    except (ValueError, KeyError, TypeError) as err:
        raise ConvertError(f"{path}: not COCO instances with annotations ({type(err).__name__}: {err})") from None
    return annotations, images


def target_ids(ref):
    """The ref's annotation ids; [] for no target ([-1], or "no_target" set)."""
    ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
    if ref.get("no_target") or ids == [-1]:
        return []
    return ids


def grefcoco_records(refs, annotations, images, refs_path, image_prefix=""):
    """-> ({split: records}, {split: refs skipped because every target is a crowd})."""
    built, skipped = {split: [] for split in SPLITS}, Counter()
    for n, ref in enumerate(refs):
        where = f"{refs_path}: ref {ref.get('ref_id', n) if isinstance(ref, dict) else n}"
        try:
            split = ref["split"]
            if split not in built:
                continue
            ids = target_ids(ref)
            file_name = images.get(ref["image_id"]) or ref["file_name"]
            targets = []
            for ann_id in ids:
                if ann_id not in annotations:
                    raise ConvertError(f"{where}: annotation {ann_id} is not in instances.json")
                if not annotations[ann_id].get("iscrowd", 0):
                    targets.append(annotations[ann_id])
            sentences = [s["sent"] for s in ref["sentences"]]
        except (KeyError, TypeError) as err:
            raise ConvertError(f"{where}: no field {err}") from None
        if ids and not targets:
            skipped[split] += len(sentences)
            continue
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (t["bbox"] for t in targets)]
        for sentence in sentences:
            record = {"image": f"{image_prefix}{file_name}", "phrase": sentence, "boxes": boxes, "id": ref["ref_id"]}
            if targets:
                record["masks"] = [t["segmentation"] for t in targets]
            built[split].append(record)
    return built, skipped


def build_grefcoco(opts):
    refs, refs_path = read_grefs(opts.grefcoco_dir)
    annotations, images = read_annotations(opts.grefcoco_dir)
    built, skipped = grefcoco_records(refs, annotations, images, refs_path, opts.image_prefix)
    print(f"  {'split':<8}{'phrases':>10}" + "".join(f"{kind:>10}" for kind in KINDS) + f"{'skipped':>10}")
    totals = Counter()
    for split, records in built.items():
        kinds = Counter(target_kind(len(r["boxes"])) for r in records)
        totals.update(kinds)
        print(f"  {split:<8}{len(records):>10}" + "".join(f"{kinds[k]:>10}" for k in KINDS) + f"{skipped[split]:>10}")
    print(f"  {'all':<8}{sum(totals.values()):>10}" + "".join(f"{totals[k]:>10}" for k in KINDS)
          + f"{sum(skipped.values()):>10}")
    print(f"  {'paper':<8}{PUBLISHED['phrases']:>10}{PUBLISHED['none']:>10}{'':>10}{PUBLISHED['several']:>10}"
          f"   (the whole dataset, as the paper gives it)")
    return write_and_check(built, NAME, opts.split_root, opts.data_root)


def add_grefcoco_command(commands):
    command = commands.add_parser("grefcoco", help="gRefCOCO (no / one / several targets) from grefs(unc).json and "
                                                   "instances.json, as the JSONL dataset grefcoco")
    command.add_argument("--grefcoco_dir", required=True, help="folder with grefs(unc).json (or .p) and instances.json")
    command.add_argument("--split_root", required=True, help="writes <split_root>/grefcoco/grefcoco_<split>.jsonl")
    command.add_argument("--image_prefix", default="",
                         help="prepended to every image file name (e.g. other/images/mscoco/images/train2014/ to "
                              "share --data_root with the built-in RefCOCO)")
    command.add_argument("--data_root", default="",
                         help="the COCO train2014 folder (or what --image_prefix is relative to): the images are "
                              "checked too")
