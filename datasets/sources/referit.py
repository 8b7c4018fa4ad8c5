"""ReferItGame's index files from text_objseg's query and bbox JSON files (the rules of DMS's process_referit)."""
from pathlib import Path

from .common import ConvertError, read_json, write_splits
from .refer import PLACEHOLDER

REFERIT_SKIPPED_IMAGES = {"19579.jpg", "17975.jpg", "19575.jpg"}  # as the original files (DMS process_referit)
PUBLISHED = "ronghanghu/text_objseg, exp-referit/data/ on GitHub (the query and bbox JSON files)"


def build_referit(opts):
    folder = Path(opts.referit_dir)
    bbox_path = folder / "referit_bbox.json"
    boxes = read_json(bbox_path, PUBLISHED)
    built = {}
    for split in ("train", "val", "trainval", "test"):
        path = folder / f"referit_query_{split}.json"
        entries = []
        for name, queries in read_json(path, PUBLISHED).items():
            image = name.split("_", 1)[0] + ".jpg"
            if image in REFERIT_SKIPPED_IMAGES:
                continue
            if name not in boxes:
                raise ConvertError(f"{path}: query {name} has no box in {bbox_path}")
            try:
                box = [int(v) for v in boxes[name]]
            except (TypeError, ValueError):
                raise ConvertError(f"{bbox_path}: box of {name} is not four integers: {boxes[name]!r}") from None
            entries += [(image, f"{name}.pth", box, query, PLACEHOLDER) for query in queries]
        built[split] = entries
    return write_splits(opts.split_root, "referit", built)




def add_referit_command(commands):
    referit = commands.add_parser("referit", help="ReferItGame from text_objseg's query and bbox JSON files")
    referit.add_argument("--referit_dir", required=True, help="folder with referit_query_*.json, referit_bbox.json")
    referit.add_argument("--split_root", required=True, help="writes <split_root>/referit/referit_<split>.pth")
