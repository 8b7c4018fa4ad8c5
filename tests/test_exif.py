"""Photos as phones store them: a file whose pixels are stored turned, with the EXIF orientation tag that says how to
show them, predicts as the upright image does (boxes, image_size) through the predictor and predict.py, and as the
stored pixels with --exif ignore; HEIC and AVIF read like JPEG; JSONL datasets read in the chosen orientation and the
validator names a box that fits only the other one; built-in datasets keep the stored pixels."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_demo, oriented_copies, tiny_args, write_tiny_checkpoint
from PIL import Image, ImageOps
from torch import nn

import predict
from datasets import build_tokenizer
from datasets.grounding import GroundingDataset
from datasets.images import image_size, read_image, read_rgb
from datasets.transforms import make_transforms
from datasets.validate import validate
from inference import SegVGPredictor

ROOT = Path(__file__).resolve().parents[1]
SIZE = (96, 88)  # width, height: whole JPEG blocks, so that the turned copies compress alike


def upright_image():
    """A dark image with one bright rectangle near the top left: where it is says which way up the image is."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 60, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    rgb[10:30, 14:50] = 250
    return rgb


BRIGHT_BOX = [14, 10, 50, 30]  # x1, y1, x2, y2 of the rectangle in the upright image


class BrightestRegionModel(nn.Module):
    """Stands in for SegVG: predicts the box of the canvas pixels brighter than the image's background, so the box
    follows the image's content exactly and shows which orientation the predictor saw."""

    def __init__(self, grid):
        super().__init__()
        self.grid = grid

    def forward(self, img, img_mask, text_ids, text_mask, aux=False, image_index=None):
        size = img.shape[-1]
        boxes = []
        for k in image_index.tolist():
            ys, xs = torch.nonzero(img[k].mean(0) > 1.5, as_tuple=True)  # normalised: far above the background
            x1, y1, x2, y2 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
            boxes.append([(x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size])
        return {"pred_boxes": torch.tensor(boxes), "seg_logits": torch.zeros(len(boxes), self.grid, self.grid)}


def standin_predictor(exif="apply"):
    args = tiny_args("--dataset", "demo")
    args.bert_vocab_size = len(build_tokenizer(args))
    return SegVGPredictor(BrightestRegionModel(args.imsize // 32), build_tokenizer(args), args, fast=False, exif=exif)


def stored_pixels(path):
    """The file's pixels as stored (PIL never applies the tag by itself)."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """{tag: JPEG} for the 8 orientation tags, each showing the upright image; "upright": the upright JPEG."""
    return oriented_copies(upright_image(), tmp_path_factory.mktemp("photos"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_is_what_viewers_show(photos, orientation):
    with Image.open(photos[orientation]) as stored:
        shown = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    rgb, note = read_image(photos[orientation], "apply")
    np.testing.assert_array_equal(rgb, shown)
    assert np.abs(rgb.astype(int) - upright_image()).max() <= 8  # JPEG at quality 100: the upright image
    assert note == ({} if orientation == 1 else {"exif_orientation": orientation, "exif": "apply"})
    assert image_size(photos[orientation], "apply") == SIZE
    stored_rgb, note = read_image(photos[orientation], "ignore")
    assert list(stored_rgb.shape[1::-1]) == list(image_size(photos[orientation], "ignore"))
    assert note.get("exif") == (None if orientation == 1 else "ignore")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_predictor_sees_the_photo_upright_unless_told_to_ignore_the_tag(photos, orientation):
    reference = standin_predictor()(photos["upright"], "the red circle")
    assert reference["box"] == pytest.approx(BRIGHT_BOX, abs=3)  # the stand-in finds the rectangle
    path = photos[orientation]
    with Image.open(path) as pil:
        for source in (path, str(path), pil):
            result = standin_predictor()(source, "the red circle")
            assert result["box"] == pytest.approx(reference["box"], abs=1) and result["image_size"] == list(SIZE)
            assert result.get("exif_orientation", 1) == orientation and result.get("exif", "apply") == "apply"
    ignored = standin_predictor("ignore")(path, "the red circle")
    stored = standin_predictor()(stored_pixels(path), "the red circle")
    assert ignored["box"] == stored["box"] and ignored["image_size"] == stored["image_size"]
    if orientation != 1:
        assert (ignored["exif_orientation"], ignored["exif"]) == (orientation, "ignore")
    if orientation in (3, 6, 7, 8):  # the rectangle is elsewhere in the stored pixels: the test can tell
        assert stored["box"] != pytest.approx(reference["box"], abs=5)


def test_predict_py_gives_the_upright_boxes_and_size_for_every_tag(photos, tmp_path, capsys):
    checkpoint = write_tiny_checkpoint(tmp_path / "best_checkpoint.pth")
    pairs = tmp_path / "pairs.jsonl"
    images = [photos["upright"]] + [photos[k] for k in range(1, 9)]
    pairs.write_text("".join(json.dumps({"image": str(p), "phrase": "the red circle"}) + "\n" for p in images))
    common = ["--checkpoint", str(checkpoint), "--pairs", str(pairs), "--device", "cpu", "--json"]

    upright, *tagged = predict.main(common)
    for orientation, record in enumerate(tagged, 1):
        assert record["box"] == pytest.approx(upright["box"], abs=1) and record["image_size"] == list(SIZE)
        assert record.get("exif_orientation", 1) == orientation and record.get("exif", "apply") == "apply"
    ignored = predict.main(common + ["--exif", "ignore"])[1:]
    for orientation, record in enumerate(ignored, 1):
        assert record["image_size"] == (list(SIZE[::-1]) if orientation >= 5 else list(SIZE))
        assert record.get("exif", "ignore") == "ignore"

    # The sharded, resumable runs (--output_dir) write the same records.
    predict.main(common[:-1] + ["--output_dir", str(tmp_path / "run")])
    written = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["box"], r["image_size"], r.get("exif_orientation")) for r in written] == [
        (r["box"], r["image_size"], r.get("exif_orientation")) for r in [upright, *tagged]]
    capsys.readouterr()


def test_heic_and_avif_read_like_jpeg(photos, tmp_path):
    pytest.importorskip("pillow_heif", reason="the app's requirements: pip install -r requirements-app.txt")
    made = {}
    for suffix in (".heic", ".avif"):
        made.update({f"{suffix} {k}": v for k, v in oriented_copies(upright_image(), tmp_path, suffix, (1, 6)).items()
                     if k != "upright"})
    for name, path in made.items():
        rgb, _ = read_image(path, "apply")
        assert rgb.shape[:2] == SIZE[::-1], name
        # Brightness alike (HEIC and AVIF keep colour at half resolution, far off on this noise).
        assert np.abs(rgb.mean(-1) - upright_image().mean(-1)).mean() < 10, name  # turned wrongly: ~35
        result = standin_predictor()(path, "the red circle")
        assert result["box"] == pytest.approx(BRIGHT_BOX, abs=1) and result["image_size"] == list(SIZE), name


def test_without_pillow_heif_a_heic_file_names_the_package(tmp_path):
    pytest.importorskip("pillow_heif", reason="the app's requirements: pip install -r requirements-app.txt")
    path = oriented_copies(upright_image(), tmp_path, ".heic", (1,))[1]
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "pillow_heif.py").write_text("raise ImportError('not installed')\n")
    code = ("import sys; from datasets.images import read_image\n"
            f"try:\n    read_image({str(path)!r}, 'apply')\nexcept ValueError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{blocker}:{ROOT}", "PATH": ""}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(path) in out.stdout and "pip install pillow-heif" in out.stdout


def test_an_image_decoded_by_pil_makes_no_warning(tmp_path):
    path = tmp_path / "photo.tga"  # OpenCV does not read TGA: PIL does
    Image.fromarray(upright_image()).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = standin_predictor()(path, "the red circle")
        read_rgb(path)
    assert result["image_size"] == list(SIZE)


def jsonl_dataset(root, photos, box, exif="apply"):
    """A JSONL dataset (docs/custom_data.md) of the tag-6 photo with the given box, as a GroundingDataset."""
    (root / "split" / "mine").mkdir(parents=True, exist_ok=True)
    (root / "split" / "mine" / "mine_train.jsonl").write_text(
        json.dumps({"image": str(Path(photos[6]).name), "phrase": "the red circle", "box": box}) + "\n")
    (root / Path(photos[6]).name).write_bytes(Path(photos[6]).read_bytes())
    args = tiny_args("--dataset", "mine", "--exif", exif)
    return GroundingDataset(root, root / "split", "mine", "train", make_transforms(args, train=False),
                            build_tokenizer(tiny_args("--dataset", "demo")), args.max_query_len, exif=exif)


def test_a_jsonl_dataset_reads_its_images_in_the_chosen_orientation(photos, tmp_path):
    shown = jsonl_dataset(tmp_path / "a", photos, BRIGHT_BOX)
    assert shown.load_image(0).shape[:2] == SIZE[::-1] and shown.image_size(0) == SIZE
    stored = jsonl_dataset(tmp_path / "b", photos, BRIGHT_BOX, exif="ignore")
    assert stored.load_image(0).shape[:2] == SIZE and stored.image_size(0) == SIZE[::-1]


def test_builtin_datasets_keep_the_stored_pixels(photos, tmp_path_factory):
    root = make_demo(tmp_path_factory, seed=0, train=2, holdout=2)
    args = tiny_args("--dataset", "demo", "--exif", "apply")
    dataset = GroundingDataset(root, root / "split", "demo", "test", make_transforms(args, train=False),
                               build_tokenizer(args), args.max_query_len, exif="apply")
    (dataset.image_dir / dataset.sample_info(0)["image"]).write_bytes(Path(photos[6]).read_bytes())
    assert dataset.exif == "ignore"
    np.testing.assert_array_equal(dataset.load_image(0), stored_pixels(photos[6]))
    assert dataset.image_size(0) == SIZE[::-1]


def test_the_validator_names_a_box_that_fits_only_the_other_orientation(photos, tmp_path):
    import io

    root = tmp_path / "data"
    stored_box = [10, 60, 40, 94]  # inside the stored 88 x 96 pixels, outside the upright 96 x 88 image
    jsonl_dataset(root, photos, stored_box)
    out = io.StringIO()
    problems = validate("mine", str(root), str(root / "split"), out=out, exif="apply")
    assert len(problems) == 1 and problems[0].startswith(f"{root / 'split' / 'mine' / 'mine_train.jsonl'}:1: ")
    assert "orientation" in problems[0] and "--exif ignore" in problems[0]
    assert "train: 1 image(s) carry an EXIF orientation other than 1" in out.getvalue()
    assert validate("mine", str(root), str(root / "split"), out=io.StringIO(), exif="ignore") == []
