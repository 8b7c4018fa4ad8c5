"""Check a dataset setup before a long run.

    python -m datasets.validate --dataset unc --data_root R --split_root S [--split testA]
    python -m datasets.validate --dataset unc --split_root S --no_images     # the index files alone
    python -m datasets.validate --dataset NAME --data_root R --split_root S  # a JSONL dataset: every split file

Prints the number of expressions per split next to the published size (docs/data.md), then every problem
with its index file and entry number: missing index file or image, unreadable image, malformed tuple,
degenerate or out-of-image box, empty phrase. Exits with status 1 when there is any problem.
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from .catalog import CATALOG, EXPECTED_SIZES, how_to_get, image_dir, index_files, is_builtin, load_entries, parse_entry
from .images import TRANSPOSING, decode, read_rgb
from .records import KINDS, check_against_image, check_record, iter_records, split_files, target_kind, targets_of


def validate(dataset, data_root, split_root, splits=None, out=None, check_images=True, exif="apply"):
    """-> list of problem strings; the counts table and the problems are printed to `out` (stdout). Without
    check_images only the index files are read (data_root is not used). exif: the orientation a JSONL dataset's
    boxes are read in (datasets.images); built-in datasets are always read as stored."""
    out = out or sys.stdout
    if not is_builtin(dataset):
        return validate_records(dataset, data_root, split_root, splits, out, check_images, exif)
    splits = splits or [s for s in CATALOG[dataset]["splits"] if s != "trainval" or dataset == "referit"]
    problems = []
    uses = defaultdict(list)  # image file -> [(where, box)] for the entries that use it
    images = f"images under {Path(data_root) / CATALOG[dataset]['image_dir']}" if check_images else "images not checked"
    print(f"dataset {dataset}: index files under {Path(split_root) / dataset}, {images}", file=out)
    folder = Path(split_root) / dataset
    if not folder.is_dir():
        problems.append(f"index folder {folder} not found. {how_to_get(dataset)}")
        splits = []
    else:
        print(f"  {'split':<10}{'entries':>10}{'expected':>12}", file=out)
    for split in splits:
        for path in index_files(split_root, dataset, split):
            part = path.stem[len(dataset) + 1:]
            try:
                entries = load_entries(path, dataset)
            except (FileNotFoundError, RuntimeError) as err:
                problems.append(str(err))
                print(f"  {part:<10}{'missing' if isinstance(err, FileNotFoundError) else 'unreadable':>10}", file=out)
                continue
            expected = EXPECTED_SIZES.get(dataset, {}).get(part)
            note = "" if expected is None or len(entries) == expected else "  (differs)"
            shown = "unknown" if expected is None else str(expected)
            print(f"  {part:<10}{len(entries):>10}{shown:>12}{note}", file=out)
            for n, entry in enumerate(entries):
                where = f"{path}[{n}]"
                try:
                    file_name, box, phrase, _ = parse_entry(entry, dataset)
                except ValueError as err:
                    problems.append(f"{where}: malformed tuple: {err}")
                    continue
                if not phrase.strip():
                    problems.append(f"{where}: empty phrase")
                if box[2] <= box[0] or box[3] <= box[1]:
                    problems.append(f"{where}: degenerate box {box} (x1, y1, x2, y2 as loaded)")
                elif check_images:
                    uses[file_name].append((where, box))

    images_at = image_dir(data_root or ".", dataset)
    if uses and not images_at.is_dir():
        problems.append(f"image folder {images_at} not found ({len(uses)} images are referenced)")
        uses.clear()
    for file_name, refs in tqdm(sorted(uses.items()), desc="images", unit="img", disable=not uses):
        path = images_at / file_name
        if not path.is_file():
            problems.append(f"{refs[0][0]}: image {path} not found" + (f" (and {len(refs) - 1} more entries)"
                                                                        if len(refs) > 1 else ""))
            continue
        try:
            height, width = read_rgb(path).shape[:2]
        except Exception as err:
            problems.append(f"{refs[0][0]}: unreadable image {path}: {err}")
            continue
        for where, box in refs:
            if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
                problems.append(f"{where}: box {box} outside the {width}x{height} image {path}")

    return report(problems, out)


CONVENTIONS = {"apply": "as viewers show it, EXIF orientation applied", "ignore": "as stored, EXIF orientation ignored"}


def validate_records(dataset, data_root, split_root, splits, out, check_images, exif="apply"):
    """validate() for a JSONL dataset: every split file found (or those asked for), every line, every image."""
    problems = []
    files = split_files(split_root, dataset)
    folder = Path(split_root) / dataset
    print(f"dataset {dataset} (JSONL): split files under {folder}, "
          f"{f'images under {data_root}' if check_images else 'images not checked'}", file=out)
    if splits:
        missing = [s for s in splits if s not in files]
        problems += [f"{folder / f'{dataset}_{s}.jsonl'} not found. {how_to_get(dataset)}" for s in missing]
        files = {s: p for s, p in files.items() if s in splits}
    elif not files:
        problems.append(f"no {dataset}_<split>.jsonl file in {folder}. {how_to_get(dataset)}")
    uses = defaultdict(list)  # image -> [(split, where, [(box, mask)])]
    for split, path in files.items():
        kinds, lines = defaultdict(int), 0
        for where, record in iter_records(path, problems):
            lines += 1
            try:
                image, box, _, extra = check_record(record)
            except ValueError as err:
                problems.append(f"{where}: {err}")
                continue
            boxes, masks = targets_of(box, extra)
            kinds[target_kind(len(boxes))] += 1
            if check_images:
                uses[image].append((split, where, list(zip(boxes, masks or [None] * len(boxes)))))
        valid = sum(kinds.values())
        generalized = (f" (targets: {', '.join(f'{kinds[k]} {k}' for k in KINDS)})" if kinds["one"] != valid
                       else "")
        print(f"  {split:<10}{valid:>10} valid records of {lines}{generalized}", file=out)
    root = Path(data_root or ".")
    tagged = defaultdict(set)  # split -> its images whose EXIF orientation is not 1
    for image, refs in tqdm(sorted(uses.items()), desc="images", unit="img", disable=not uses):
        path = root / image
        if not path.is_file():
            problems += [f"{where}: image {path} not found (image paths are relative to --data_root)"
                         for _, where, _ in refs]
            continue
        try:
            rgb, orientation, turned = decode(path)  # turned: a HEIC file, upright whatever --exif says
        except Exception as err:
            problems += [f"{where}: unreadable image {path} ({err}); replace or remove it" for _, where, _ in refs]
            continue
        height, width = rgb.shape[:2]
        if orientation != 1:
            for split, _, _ in refs:
                tagged[split].add(image)
        swap = orientation in TRANSPOSING and not turned
        sizes = {"ignore": (width, height), "apply": (height, width) if swap else (width, height)}
        other = "ignore" if exif == "apply" else "apply"
        for _, where, targets in refs:
            wrong, box = next(((w, b) for b, m in targets if (w := check_against_image(b, m, *sizes[exif],
                                                                                       CONVENTIONS[exif]))),
                              (None, None))
            if wrong and sizes[other] != sizes[exif] and not any(check_against_image(b, m, *sizes[other])
                                                                 for b, m in targets):
                wrong = (f"box {box} lies outside the {sizes[exif][0]}x{sizes[exif][1]} image ({CONVENTIONS[exif]}) "
                         f"but inside it in the other orientation ({sizes[other][0]}x{sizes[other][1]}, EXIF "
                         f"orientation {orientation}): were its boxes drawn on the image "
                         f"{CONVENTIONS[other].split(',')[0]}? Then validate and train with --exif {other}")
            if wrong:
                problems.append(f"{where}: {wrong}")
    for split in files:
        if tagged[split]:
            print(f"  {split}: {len(tagged[split])} image(s) carry an EXIF orientation other than 1; their boxes are "
                  f"read {CONVENTIONS[exif]} (--exif {exif})", file=out)
    return report(problems, out)


def report(problems, out):
    print(f"{len(problems)} problem(s)", file=out)
    for problem in problems:
        print(f"  {problem}", file=out)
    return problems


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m datasets.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True,
                        help=f"dataset to check: {', '.join(sorted(CATALOG))}, or a JSONL dataset's name")
    parser.add_argument("--data_root", help="image root (docs/data.md has the layout)")
    parser.add_argument("--split_root", required=True, help="folder holding <dataset>/<dataset>_<split>.pth")
    parser.add_argument("--split", help="check one split only (default: all)")
    parser.add_argument("--no_images", action="store_true", help="check the index files only, not the images")
    parser.add_argument("--exif", default="apply", choices=["apply", "ignore"],
                        help="a JSONL dataset's convention, as given to train.py / eval.py: its boxes refer to the "
                             "image as viewers show it (apply) or to the stored pixels (ignore); built-in datasets "
                             "are always read as stored")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if not args.data_root and not args.no_images:
        parser.error("--data_root is required unless --no_images is given")
    if args.split and is_builtin(args.dataset) and args.split not in CATALOG[args.dataset]["splits"]:
        parser.error(f"dataset {args.dataset} has no split {args.split}; choose from {CATALOG[args.dataset]['splits']}")
    problems = validate(args.dataset, args.data_root, args.split_root, [args.split] if args.split else None,
                        check_images=not args.no_images, exif=args.exif)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
