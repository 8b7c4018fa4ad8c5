"""What every converter shares: its error, reading a release's files, writing splits atomically and validating what
was written (the index tuples of a built-in dataset, or the JSONL records of any other)."""
import io
import json
import math
from pathlib import Path

from tqdm import tqdm

from utils.files import atomic_save

from ..records import index_path, write_jsonl
from ..validate import validate


class ConvertError(Exception):
    """A missing or unconvertible source; the message names the file and the entry or line."""


def require(path, published=""):
    """path, or ConvertError naming it (and where it is published)."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} not found" + (f": it is published in {published}" if published else ""))
    return path


def read_json(path, published):
    """json.load with a progress bar over the bytes (REFER's instances.json is ~100 MB)."""
    path = require(path, published)
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
        raise ConvertError(f"{path} is not valid JSON ({err}); download it again from {published}") from None


def number(value, where, column):
    """A finite number of a table cell (an int where it is whole), or ConvertError naming the cell."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ConvertError(f"{where}: {column} is not a number: {value!r}") from None
    if not math.isfinite(result):
        raise ConvertError(f"{where}: {column} is not a finite number: {value!r}")
    return int(result) if result.is_integer() else result


def write_splits(split_root, dataset, splits):
    """A built-in dataset's index files; splits: {split: entries}, each file written atomically (a crash leaves no
    half-written split). Then the counts next to the published sizes and the validator on the written files."""
    folder = Path(split_root) / dataset
    for split, entries in splits.items():
        atomic_save(entries, folder / f"{dataset}_{split}.pth")
    print(f"wrote {', '.join(f'{dataset}_{s}.pth' for s in splits)} to {folder}")
    return validate(dataset, "", split_root, list(splits), check_images=False)


def validate_written(dataset, split_root, splits, data_root):
    """The validator on a JSONL dataset's written splits (its images too when data_root is given)."""
    return validate(dataset, data_root or "", split_root, list(splits), check_images=bool(data_root))


def write_and_check(records_by_split, dataset, split_root, data_root):
    """A JSONL dataset's splits ({split: records}), each written atomically, then validated."""
    for split, records in records_by_split.items():
        path = index_path(split_root, dataset, split)
        write_jsonl(path, records)
        print(f"wrote {len(records)} records to {path}")
    return validate_written(dataset, split_root, records_by_split, data_root)
