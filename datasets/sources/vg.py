"""Visual Genome (Krishna et al., IJCV 2017) region descriptions as the JSON-lines dataset `vg`, for pre-training:

    python -m datasets.build_index vg --vg_dir DIR --split_root OUT [--image_prefix P] [--data_root R]

reads DIR/region_descriptions.json (v1.2: one entry per image, {"id", "regions": [{"region_id", "image_id", "phrase",
"x", "y", "width", "height"}, ...]}) as a stream, one image's entry at a time (the release's file is ~700 MB), and
DIR/image_data.json (each image's width, height, url and coco_id). Writes OUT/vg/vg_train.jsonl, one record per region
description: the box x, y, w, h as x1, y1, x2, y2, the image as VG_100K/<id>.jpg or VG_100K_2/<id>.jpg (the folder
of its url) after --image_prefix, the region id as "id", and the image's "coco_id" where it is a COCO image too, so
that mixed training keeps RefCOCO-family val/test images out. Regions with an empty phrase, a degenerate box or one
outside the image are dropped and counted, and so are exact repeats (image, phrase, box); a phrase's runs of
whitespace become single spaces.
"""
import json
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from utils.files import atomic_write

from .common import ConvertError, validate_written

NAME = "vg"
SOURCE = "Visual Genome v1.2 (homes.cs.washington.edu/~ranjay/visualgenome/api.html: region_descriptions.json.zip " \
         "and image_data.json.zip)"
# The release, as its paper and site give it.
PUBLISHED = {"images": 108077, "regions": "about 5.41 million"}
READ_BYTES = 1 << 20
MAX_ELEMENT = 64 << 20


def iter_json_array(path, bar=None):
    """The elements of a file holding one JSON array, decoded one at a time: memory holds one element and a read
    buffer, not the file."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buffer, position, ended = "", 0, False

        def more():
            nonlocal buffer, position, ended
            chunk = f.read(READ_BYTES)
            if bar is not None:
                bar.update(len(chunk) if chunk.isascii() else len(chunk.encode("utf-8")))
            ended = not chunk
            buffer, position = buffer[position:] + chunk, 0

        while True:  # up to the opening bracket
            more()
            stripped = buffer.lstrip()
            if stripped or ended:
                break
        if not stripped.startswith("["):
            raise ConvertError(f"{path}: expected a JSON array (the release's layout), found {stripped[:40]!r}")
        position = buffer.index("[") + 1
        while True:
            while True:  # past whitespace and the comma between elements
                while position < len(buffer) and buffer[position] in " \t\r\n,":
                    position += 1
                if position < len(buffer) or ended:
                    break
                more()
            if position >= len(buffer):
                raise ConvertError(f"{path}: the array is not closed (a cut download?); download it again from "
                                   f"{SOURCE}")
            if buffer[position] == "]":
                return
            try:
                value, end = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as err:
                if ended or len(buffer) - position > MAX_ELEMENT:
                    raise ConvertError(f"{path}: malformed JSON ({err.msg}); download it again from {SOURCE}") from None
                more()
                continue
            position = end
            yield value


def image_table(path):
    """{image id: (folder/file name, width, height, coco id or None)} of image_data.json."""
    if not Path(path).is_file():
        raise ConvertError(f"{path} not found: it is published in {SOURCE}")
    table = {}
    for n, image in enumerate(iter_json_array(path)):
        try:
            image_id = image.get("image_id", image.get("id"))
            folder = image["url"].rstrip("/").split("/")[-2]
            table[image_id] = (f"{folder}/{image_id}.jpg", image["width"], image["height"], image.get("coco_id"))
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise ConvertError(f"{path}: image entry {n} lacks {err} (needs image_id, url, width, height)") from None
    return table


def region_records(path, images, image_prefix, counts):
    """The records of region_descriptions.json, one image entry at a time; counts["..."] what was dropped and why."""
    size = Path(path).stat().st_size
    with tqdm(total=size, unit="B", unit_scale=True, desc=Path(path).name, disable=size < 20 << 20) as bar:
        for n, entry in enumerate(iter_json_array(path, bar)):
            try:
                regions = entry["regions"]
                image_id = entry.get("id", entry.get("image_id"))
            except (KeyError, TypeError):
                raise ConvertError(f"{path}: entry {n} is not an image's {{\"id\", \"regions\"}}") from None
            counts["images read"] += 1
            seen = set()
            for region in regions:
                counts["regions read"] += 1
                record = region_record(region, images.get(region.get("image_id", image_id)), image_prefix, counts)
                if record is None:
                    continue
                key = (record["image"], record["phrase"], tuple(record["box"]))
                if key in seen:
                    counts["dropped: exact repeat (image, phrase, box)"] += 1
                    continue
                seen.add(key)
                counts["regions kept"] += 1
                yield record


def region_record(region, image, image_prefix, counts):
    """A region as a record, or None (counted) when it cannot be one."""
    if image is None:
        counts["dropped: image not in image_data.json"] += 1
        return None
    file_name, width, height, coco_id = image
    phrase = " ".join(str(region.get("phrase") or "").split())
    try:
        x, y, w, h = (region[k] for k in ("x", "y", "width", "height"))
        box = [x, y, x + w, y + h]
    except (KeyError, TypeError):
        counts["dropped: no box (x, y, width, height)"] += 1
        return None
    if not phrase:
        counts["dropped: empty phrase"] += 1
        return None
    if w <= 0 or h <= 0:
        counts["dropped: degenerate box"] += 1
        return None
    if x < 0 or y < 0 or box[2] > width or box[3] > height:
        counts["dropped: box outside the image"] += 1
        return None
    record = {"image": f"{image_prefix}{file_name}", "phrase": phrase, "box": box, "id": region.get("region_id")}
    if coco_id is not None:
        record["coco_id"] = coco_id
    return record


def build_vg(opts):
    folder = Path(opts.vg_dir)
    regions_path = folder / "region_descriptions.json"
    if not regions_path.is_file():
        raise ConvertError(f"{regions_path} not found: it is published in {SOURCE}")
    images = image_table(folder / "image_data.json")
    counts = Counter()
    out = Path(opts.split_root) / NAME / f"{NAME}_train.jsonl"

    def write(f):
        lines = []
        for record in region_records(regions_path, images, opts.image_prefix, counts):
            lines.append(json.dumps(record))
            if len(lines) == 10000:
                f.write(("\n".join(lines) + "\n").encode())
                lines = []
        if lines:
            f.write(("\n".join(lines) + "\n").encode())

    atomic_write(out, write)
    print(f"wrote {counts['regions kept']} records to {out}")
    print(f"  images: {counts['images read']} read, {len(images)} in image_data.json (the release: "
          f"{PUBLISHED['images']:,})")
    print(f"  regions: {counts['regions read']} read (the release: {PUBLISHED['regions']}), "
          f"{counts['regions kept']} kept")
    for reason, count in sorted(counts.items()):
        if reason.startswith("dropped"):
            print(f"  {reason}: {count}")
    return validate_written(NAME, opts.split_root, ["train"], opts.data_root)


def add_vg_command(commands):
    command = commands.add_parser("vg", help="Visual Genome's region descriptions (pre-training) as the JSONL dataset "
                                             "vg")
    command.add_argument("--vg_dir", required=True,
                         help="folder with region_descriptions.json and image_data.json (v1.2, unzipped)")
    command.add_argument("--split_root", required=True, help="writes <split_root>/vg/vg_train.jsonl")
    command.add_argument("--image_prefix", default="",
                         help="prepended to every image path (VG_100K/<id>.jpg), e.g. vg/ to keep the images in "
                              "<data_root>/vg beside the built-in datasets")
    command.add_argument("--data_root", default="", help="image root: the images are checked too")
