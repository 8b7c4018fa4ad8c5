"""Fetch the authors' SegVG checkpoint of a dataset (and its index files) from their Google Drive folder, resuming a
cut download, then check it (docs/weights.md, "The official checkpoints"). Needs gdown: pip install -r
requirements-fetch.txt.

    python tools/fetch_official.py --dataset unc [--output_dir ckpt] [--annotations --split_root data/split]

writes <output_dir>/<dataset>/best_checkpoint.pth (the eval.py commands of README.md read it there) and with
--annotations <split_root>/<dataset>/<dataset>_<split>.pth. A checkpoint is kept only when it loads with
weights_only, its keys convert to this code's through the official key map and every tensor has the model's shape;
anything else is moved aside as <file>.corrupt. When Drive refuses (its download quota), one line says how to fetch
the file by hand. --url fetches from another address (a mirror) instead of listing the Drive folder.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.validate import validate  # noqa: E402
from models.checkpoint import CheckpointError  # noqa: E402
from models.pretrained import load_from_checkpoint, parameter_count  # noqa: E402

FOLDER_ID = "1oKrM8NefV6F18Lkli092vstdTtPPwlwj"
FOLDER_URL = f"https://drive.google.com/drive/folders/{FOLDER_ID}"
DATASETS = ("unc", "unc+", "gref", "gref_umd", "referit")
PAPER_PARAMETERS = 186_331_333  # the paper's model (ResNet-101, BERT-base, 640 px), BatchNorm statistics aside
QUOTA = ("too many users", "quota")


class FetchError(Exception):
    """What could not be fetched or checked, and what to do; one line."""


def require_gdown():
    try:
        import gdown
    except ImportError:
        raise FetchError("fetching from Google Drive needs gdown: pip install -r requirements-fetch.txt") from None
    return gdown


def manual_route(what, target, reason):
    return (f"Google Drive refuses {what} for now ({reason}). By hand: open {FOLDER_URL}, download {what} into "
            f"{target}, then run this command again to check it")


def list_folder(dataset, annotations):
    """[(Drive path, file id)] of the dataset's checkpoint (and index files) in the authors' folder."""
    gdown = require_gdown()
    try:
        files = gdown.download_folder(id=FOLDER_ID, skip_download=True, quiet=True)
    except Exception as err:  # gdown's errors, and the network's
        raise FetchError(manual_route(f"the listing of {FOLDER_URL}", "this folder",
                                     str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__))
    wanted = []
    for item in files:
        parts = Path(item.path).parts
        if dataset in parts and item.path.endswith(".pth") and (
                "ckpt" in parts or (annotations and any(p.startswith("annotation") for p in parts))):
            wanted.append((item.path, item.id))
    if not any("ckpt" in Path(path).parts for path, _ in wanted):
        raise FetchError(f"no {dataset} checkpoint in {FOLDER_URL} (found: {', '.join(i.path for i in files)[:300]})")
    return wanted


def download(url, target, what):
    """url into target, resuming a partial download of an earlier run; FetchError on Drive's quota page, a cut
    transfer (run again: it resumes) or an unreachable address."""
    gdown = require_gdown()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        gdown.download(url=url, output=str(target), resume=True, quiet=False)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if any(word in reason.lower() for word in QUOTA):
            raise FetchError(manual_route(what, target, "its download quota: too many users")) from None
        raise FetchError(f"the download of {what} stopped ({reason}): run the same command again, it resumes") \
            from None
    with target.open("rb") as f:
        head = f.read(4096).lower()
    if head.lstrip().startswith((b"<!doctype html", b"<html")):  # an error page saved in place of the file
        target.unlink()
        reason = "its download quota: too many users" if any(w.encode() in head for w in QUOTA) else "a web page"
        raise FetchError(manual_route(what, target, reason))


def check_checkpoint(path):
    """Load it as eval.py does; a file that does not load or fit is moved aside as <file>.corrupt."""
    try:
        model, _, args, official = load_from_checkpoint(path)
    except CheckpointError as err:
        corrupt = path.with_name(path.name + ".corrupt")
        path.replace(corrupt)
        raise FetchError(f"{path} is refused ({err}); moved aside to {corrupt}: run the command again to download "
                         f"it anew") from None
    count = parameter_count(model.state_dict())
    size = ("the paper's model" if count == PAPER_PARAMETERS else
            f"not the paper's {PAPER_PARAMETERS:,}: a smaller configuration ({args.backbone}, {args.imsize} px)")
    print(f"{path}: {'an official' if official else 'our'} checkpoint, loads with weights_only, every key converted "
          f"and every shape fitting; {count:,} parameters ({size})")


def get_args_parser():
    parser = argparse.ArgumentParser(prog="tools/fetch_official.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="whose checkpoint to fetch")
    parser.add_argument("--output_dir", default="ckpt", help="writes <output_dir>/<dataset>/best_checkpoint.pth")
    parser.add_argument("--annotations", action="store_true", help="also the dataset's index files")
    parser.add_argument("--split_root", default="data/split",
                        help="with --annotations: writes <split_root>/<dataset>/<dataset>_<split>.pth")
    parser.add_argument("--url", default="",
                        help="fetch the checkpoint from this address (a mirror) instead of listing the Drive folder")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    target = Path(opts.output_dir) / opts.dataset / "best_checkpoint.pth"
    files = [(f"ckpt/{opts.dataset}/best_checkpoint.pth", opts.url)] if opts.url else [
        (path, f"https://drive.google.com/uc?id={file_id}") for path, file_id in list_folder(opts.dataset,
                                                                                             opts.annotations)]
    for drive_path, url in files:
        if "ckpt" in Path(drive_path).parts:
            if not target.is_file():
                download(url, target, drive_path)
            check_checkpoint(target)
        else:
            index = Path(opts.split_root) / opts.dataset / Path(drive_path).name
            download(url, index, drive_path)
    if opts.annotations and not opts.url:
        if validate(opts.dataset, "", opts.split_root, check_images=False):
            raise FetchError(f"the index files under {Path(opts.split_root) / opts.dataset} have problems (above)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FetchError as err:
        sys.exit(f"error: {err}")
