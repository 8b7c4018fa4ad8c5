"""Converters into the JSON-lines format of any dataset (datasets/records.py), run as datasets.build_index
subcommands: a CSV table, ODVG grounding lines (MM-Grounding-DINO, Open-GroundingDino), or a built-in dataset's
index files. Each writes <split_root>/NAME/NAME_<split>.jsonl atomically, then validates what it wrote (the images
too when --data_root is given)."""
import csv
import json
from pathlib import Path

from ..catalog import CATALOG, image_dir, index_files, is_builtin, load_entries, parse_entry
from .common import ConvertError, number, require, write_and_check

CSV_COLUMNS = ("image", "phrase", "x1", "y1", "x2", "y2")


def csv_records(path):
    """A header row naming image, phrase, x1, y1, x2, y2 (any order; id and type kept, other columns ignored)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConvertError(f"{path}:1: the header lacks {', '.join(missing)} (it needs {', '.join(CSV_COLUMNS)}, "
                               f"in any order)")
        records = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            record = {"image": row["image"], "phrase": row["phrase"],
                      "box": [number(row[c], where, c) for c in CSV_COLUMNS[2:]]}
            record.update({key: row[key] for key in ("id", "type") if row.get(key)})
            records.append(record)
    return records


def odvg_records(path):
    """ODVG grounding lines: {"filename", "height", "width", "grounding": {"regions": [{"bbox": [x1, y1, x2, y2],
    "phrase"}, ...]}} -> one record per region."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                item = json.loads(line)
                regions = item["grounding"]["regions"]
                image = item["filename"]
            except json.JSONDecodeError as err:
                raise ConvertError(f"{where}: malformed JSON ({err.msg})") from None
            except (KeyError, TypeError) as err:
                raise ConvertError(f"{where}: not an ODVG grounding line (no {err}); detection lines (\"detection\") "
                                   f"carry no phrases") from None
            for k, region in enumerate(regions):
                try:
                    box = [number(v, where, f"region {k} bbox") for v in region["bbox"]]
                    records.append({"image": image, "phrase": region["phrase"], "box": box})
                except (KeyError, TypeError) as err:
                    raise ConvertError(f"{where}: region {k} lacks {err}") from None
    return records


def builtin_records(dataset, split_root, split, float_boxes):
    """A built-in dataset's split as records: boxes as its loader reads them (x1, y1, x2, y2; truncated to int like
    the original unless float_boxes), image paths relative to --data_root, the demo's expression types kept."""
    prefix = Path(image_dir("", dataset))
    records = []
    for path in index_files(split_root, dataset, split):
        for n, entry in enumerate(load_entries(path, dataset)):
            try:
                file_name, box, phrase, extra = parse_entry(entry, dataset, float_boxes)
            except ValueError as err:
                raise ConvertError(f"{path}[{n}]: {err}") from None
            record = {"image": str(prefix / file_name), "phrase": phrase,
                      "box": [int(v) if float(v).is_integer() else v for v in box]}
            if dataset == "demo":
                record["type"] = extra["attribute"]
            records.append(record)
    return records


def check_name(name):
    if is_builtin(name) or not name or "/" in name:
        raise ConvertError(f"--dataset {name!r}: give a new name (not a built-in one: {', '.join(sorted(CATALOG))})")


def convert_csv(opts):
    check_name(opts.dataset)
    return write_and_check({opts.split: csv_records(require(opts.csv))}, opts.dataset, opts.split_root,
                           opts.data_root)


def convert_odvg(opts):
    check_name(opts.dataset)
    return write_and_check({opts.split: odvg_records(require(opts.odvg))}, opts.dataset, opts.split_root,
                           opts.data_root)


def convert_builtin(opts):
    check_name(opts.out_dataset)
    splits = [s for s in CATALOG[opts.dataset]["splits"] if s != "trainval" or opts.dataset == "referit"]
    built = {s: builtin_records(opts.dataset, opts.split_root, s, opts.float_boxes) for s in splits}
    return write_and_check(built, opts.out_dataset, opts.split_root, opts.data_root)


CONVERTERS = {"csv": convert_csv, "odvg": convert_odvg, "jsonl": convert_builtin}


def add_commands(commands):
    """The csv, odvg and jsonl subcommands of datasets.build_index (CONVERTERS runs them)."""
    csv_command = commands.add_parser("csv", help="your own data from a CSV table (image, phrase, x1, y1, x2, y2)")
    csv_command.add_argument("--csv", required=True, help="CSV file with a header row")
    odvg = commands.add_parser("odvg", help="your own data from ODVG grounding lines (one record per region)")
    odvg.add_argument("--odvg", required=True, help="ODVG JSONL file (filename, height, width, grounding.regions)")
    for command in (csv_command, odvg):
        command.add_argument("--dataset", required=True, help="name of the dataset to write (not a built-in one)")
        command.add_argument("--split", required=True, help="split to write: train, val, test or any other name")
    jsonl = commands.add_parser("jsonl", help="a built-in dataset's index files rewritten as a JSONL dataset")
    jsonl.add_argument("--dataset", required=True, choices=sorted(CATALOG), help="the built-in dataset to convert")
    jsonl.add_argument("--out_dataset", required=True, help="name of the JSONL dataset to write")
    jsonl.add_argument("--float_boxes", action="store_true",
                       help="keep the boxes' fractions (by default truncated to int, as the loader reads them)")
    for command in (csv_command, odvg, jsonl):
        command.add_argument("--split_root", required=True,
                             help="writes <split_root>/<name>/<name>_<split>.jsonl (for jsonl: also where the "
                                  "built-in index files are read)")
        command.add_argument("--data_root", default="",
                             help="image root: validate the images too (default: the records alone)")
