"""Flickr30k Entities' index files from its Annotations/ and Sentences/ (one entry per phrase with a box; a phrase's
box is the union of its entity's boxes)."""
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from tqdm import tqdm

from .common import ConvertError, require, write_splits

PUBLISHED = "BryanPlummer/flickr30k_entities on GitHub (annotations.zip and the split lists)"
FLICKR_PHRASE = re.compile(r"\[/EN#(\d+)/\S+ ([^\]]+)\]")


def flickr_boxes(path):
    """Annotations/<id>.xml -> {entity chain id: [x1, y1, x2, y2], the union of its boxes}."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as err:
        raise ConvertError(f"{path} cannot be parsed: {err}") from None
    union = {}
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:  # nobndbox / scene objects have no box
            continue
        try:
            coords = [int(float(box.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise ConvertError(f"{path}: an object of {[n.text for n in obj.iter('name')]} has a malformed "
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
        ids = [line.strip() for line in require(folder / f"{split}.txt", PUBLISHED).read_text().splitlines()
               if line.strip()]
        entries = []
        for image_id in tqdm(ids, desc=f"flickr {split}", unit="img", disable=len(ids) < 2000):
            boxes = flickr_boxes(require(folder / "Annotations" / f"{image_id}.xml", PUBLISHED))
            sentences = require(folder / "Sentences" / f"{image_id}.txt", PUBLISHED).read_text(encoding="utf-8")
            for line in sentences.splitlines():
                for chain, phrase in FLICKR_PHRASE.findall(line):
                    if chain in boxes:
                        entries.append((f"{image_id}.jpg", list(boxes[chain]), phrase))
        built[split] = entries
    return write_splits(opts.split_root, "flickr", built)




def add_flickr_command(commands):
    flickr = commands.add_parser("flickr", help="Flickr30k Entities: Annotations/, Sentences/, train/val/test.txt")
    flickr.add_argument("--flickr_dir", required=True,
                        help="Flickr30k Entities folder: Annotations/, Sentences/, train.txt, val.txt, test.txt")
    flickr.add_argument("--split_root", required=True, help="writes <split_root>/flickr/flickr_<split>.pth")
