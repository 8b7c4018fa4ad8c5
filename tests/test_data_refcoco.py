"""The real dataset class and the validator on a tiny dataset in the exact RefCOCO (unc) disk layout."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets import build_dataset, collate_fn, encode_text
from datasets.catalog import CATALOG, index_files, parse_entry
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from datasets.validate import main as validate_main
from datasets.validate import validate
from train import get_args_parser

IMAGE_DIR = "other/images/mscoco/images/train2014"
WIDTH, HEIGHT = 120, 90
RED = (220, 20, 20)
# image number -> (PIL mode on disk, extension)
KINDS = {1: ("RGB", "jpg"), 2: ("L", "jpg"), 3: ("CMYK", "jpg"), 4: ("RGBA", "png"), 5: ("I;16", "png"),
         6: ("P", "png")}


def coco_name(n, ext="jpg"):
    return f"COCO_train2014_{n:012d}.{ext}"


def picture(n):
    """uint8 [H, W, 3]: grey background and a red box at x 20.7..60.2, y 30.4..70.9 (as in the index)."""
    img = np.full((HEIGHT, WIDTH, 3), 40 + 10 * n, np.uint8)
    img[30:70, 20:60] = RED
    return img


def save(path, n, mode):
    rgb = Image.fromarray(picture(n))
    if mode == "I;16":
        # 16-bit grey: the top byte is the grey value, so a correct reader gets picture(n)'s luminance.
        Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(path)
    elif mode == "P":
        rgb.quantize(8).save(path)
    elif path.suffix == ".jpg":
        rgb.convert(mode).save(path, quality=95)
    else:
        rgb.convert(mode).save(path)


def make_refcoco(root):
    """root/images + root/split/unc/unc_{train,val,testA,testB}.pth, 5-tuples (file, ann id, xywh, phrase, attr)."""
    image_dir = root / "images" / IMAGE_DIR
    image_dir.mkdir(parents=True)
    (root / "split" / "unc").mkdir(parents=True)
    entries = []
    for n, (mode, ext) in KINDS.items():
        save(image_dir / coco_name(n, ext), n, mode)
        entries.append((coco_name(n, ext), 1000 + n, [20.7, 30.4, 39.5, 40.5], f"The RED box {n}", []))
    splits = {"train": entries, "val": entries[:2], "testA": entries[2:3], "testB": entries[3:4]}
    for split, rows in splits.items():
        torch.save(rows, root / "split" / "unc" / f"unc_{split}.pth")
    return root


@pytest.fixture
def refcoco(tmp_path):
    return make_refcoco(tmp_path)


def args_for(root, *flags):
    return get_args_parser().parse_args(["--dataset", "unc", "--data_root", str(root / "images"),
                                         "--split_root", str(root / "split"), "--imsize", "128",
                                         "--max_query_len", "8", "--vocab_file", str(write_vocab(root)), *flags])


def write_vocab(root):
    path = root / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "box",
                               *"0123456789"]) + "\n")
    return path


def test_every_image_kind_reads_as_rgb(refcoco):
    ds = build_dataset("train", args_for(refcoco))
    assert len(ds) == len(KINDS)
    for i, (n, (mode, _)) in enumerate(KINDS.items()):
        img = ds.load_image(i)
        assert img.dtype == np.uint8 and img.shape == (HEIGHT, WIDTH, 3), mode
        expected = picture(n)
        if mode in ("L", "I;16"):
            expected = np.repeat(np.asarray(Image.fromarray(expected).convert("L"))[:, :, None], 3, axis=2)
        tolerance = {"RGB": 8, "L": 8, "CMYK": 12}.get(mode, 1)  # JPEG is lossy
        assert np.abs(img.astype(int) - expected).mean() < tolerance, mode


def test_eval_sample_keeps_the_box_on_the_red_pixels(refcoco):
    ds = build_dataset("testA", args_for(refcoco))  # the CMYK JPEG
    sample = ds[0]
    canvas = sample["img"].numpy().transpose(1, 2, 0) * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)
    red = canvas[..., 0] - canvas[..., 1] > 0.4
    ys, xs = np.nonzero(red)
    # 120x90 -> 128x96 (ratio 16/15) centred with 16 rows above; loader box: int(20.7)=20, int(39.5)=39 ...
    scale = 128 / 120
    box = np.array([20 * scale, 30 * scale + 16, 59 * scale, 70 * scale + 16])
    assert np.abs(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) - box).max() <= 1.5
    cx, cy, w, h = sample["target"].numpy() * 128
    np.testing.assert_allclose([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], box, atol=1e-4)


def test_box_truncation_like_the_original_and_float_boxes(refcoco):
    info = build_dataset("val", args_for(refcoco)).sample_info(0)
    assert info["box"] == [20, 30, 59, 70]  # int(x), int(y), int(x) + int(w), int(y) + int(h)
    assert info["phrase"] == "The RED box 1" and info["ann_id"] == 1001
    assert info["image"].endswith(IMAGE_DIR + "/" + coco_name(1))
    info = build_dataset("val", args_for(refcoco, "--float_boxes")).sample_info(0)
    np.testing.assert_allclose(info["box"], [20.7, 30.4, 60.2, 70.9])


def test_batch_format(refcoco):
    args = args_for(refcoco, "--aug_scale", "--aug_crop", "--aug_translate", "--aug_blur")
    ds = build_dataset("train", args)
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_fn, num_workers=1)
    batches = list(loader)
    batch = batches[0]
    assert set(batch) == {"img", "img_mask", "image_rect", "text_ids", "text_mask", "target", "pos_region", "index",
                          "n_targets"}
    expected = {"img": (torch.float32, (3, 3, 128, 128)), "img_mask": (torch.bool, (3, 128, 128)),
                "image_rect": (torch.long, (3, 4)),
                "text_ids": (torch.long, (3, 8)), "text_mask": (torch.long, (3, 8)),
                "target": (torch.float32, (3, 4)), "pos_region": (torch.bool, (3, 128, 128)),
                "index": (torch.long, (3,))}
    for key, (dtype, shape) in expected.items():
        assert batch[key].dtype == dtype and tuple(batch[key].shape) == shape, key
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(KINDS)))
    assert not batch["img_mask"].any()
    # The image's rectangle lies on the canvas and holds its pixels: nothing but zeros outside it.
    rect = batch["image_rect"]
    assert (rect[:, :2] >= 0).all() and (rect[:, 2:] <= 128).all() and (rect[:, 2:] > rect[:, :2]).all()
    for img, (x1, y1, x2, y2) in zip(batch["img"], rect.tolist()):
        outside = img.clone()
        outside[:, y1:y2, x1:x2] = 0
        assert not outside.any()
    # Lower-cased before tokenization, like the original.
    ids, mask = encode_text(ds.tokenizer, "the red box 1", 8)
    assert batch["text_ids"][0].tolist() == ids and batch["text_mask"][0].tolist() == mask


def test_cache_data_gives_the_same_samples_and_keeps_the_images_intact(refcoco):
    """--cache_data, three epochs: the same tensors as reading each time, and the cached images are still what is on
    disk (no transform writes into its input; the canvas is the images' long side, so that the resize, unless the crop
    branch runs, hands the cached image itself to the colour jitter)."""
    flags = ("--imsize", str(WIDTH), "--aug_crop", "--aug_translate", "--aug_blur", "--color_jitter", "0.4")
    plain = build_dataset("train", args_for(refcoco, *flags))
    cached = build_dataset("train", args_for(refcoco, *flags, "--cache_data"))
    for epoch in range(3):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for idx in range(len(plain)):
            a, b = plain[idx], cached[idx]
            for key in a:
                assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), (epoch, idx, key)
    assert len(cached.cache["images"]) == len(KINDS) and plain.cache is None
    for idx in range(len(cached)):
        file_name = cached.image_names()[cached.image_id(idx)]
        np.testing.assert_array_equal(cached.cache["images"][file_name], plain.load_image(idx))


def test_trainval_is_train_plus_val(refcoco):
    assert len(build_dataset("trainval", args_for(refcoco))) == len(KINDS) + 2
    files = index_files("S", "referit", "trainval")
    assert [f.name for f in files] == ["referit_trainval.pth"]


def test_other_tuple_formats():
    assert parse_entry(("a.jpg", [1.9, 2, 30.5, 40], "x"), "flickr")[1] == [1, 2, 30, 40]
    assert parse_entry(("a.jpg", "a_1.mat", [1.9, 2, 30.5, 40], "x", []), "referit")[1] == [1, 2, 30, 40]
    assert CATALOG["referit"]["image_dir"] == "referit/images"


def test_errors_name_the_path_and_what_to_do(refcoco, tmp_path):
    args = args_for(refcoco)
    args.split_root = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"index folder .*nowhere.unc not found.*docs/data.md"):
        build_dataset("train", args)
    (refcoco / "split" / "unc" / "unc_testB.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"unc_testB\.pth not found"):
        build_dataset("testB", args_for(refcoco))
    with pytest.raises(ValueError, match="has no split 'test'"):
        build_dataset("test", args_for(refcoco))

    ds = build_dataset("train", args_for(refcoco))
    (refcoco / "images" / IMAGE_DIR / coco_name(2)).unlink()
    with pytest.raises(FileNotFoundError, match=r"unc/train sample 1: image .*000000000002\.jpg not found"):
        ds[1]
    (refcoco / "images" / IMAGE_DIR / coco_name(1)).write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(RuntimeError, match=r"unc/train sample 0: cannot read image .*000000000001\.jpg"):
        ds[0]
    # A malformed tuple stops the run when the split is opened (its index is built), naming the file and entry.
    path = refcoco / "split" / "unc" / "unc_train.pth"
    entries = torch.load(path, weights_only=True)
    entries[2] = ("x.jpg", [1, 2, 3, 4], "three fields")
    torch.save(entries, path)
    with pytest.raises(ValueError, match=r"unc_train\.pth\[2\]: malformed index entry: expected a 5-tuple"):
        build_dataset("train", args_for(refcoco))


def test_truncated_jpeg_is_an_error(refcoco):
    path = refcoco / "images" / IMAGE_DIR / coco_name(1)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(RuntimeError, match="sample 0: cannot read image"):
        build_dataset("val", args_for(refcoco))[0]


def test_validator_accepts_a_clean_dataset(refcoco, capsys):
    assert validate("unc", refcoco / "images", refcoco / "split") == []
    out = capsys.readouterr().out
    assert "train" in out and "120624" in out and "0 problem(s)" in out
    with pytest.raises(SystemExit) as exit_info:
        validate_main(["--dataset", "unc", "--data_root", str(refcoco / "images"),
                       "--split_root", str(refcoco / "split"), "--split", "testA"])
    assert exit_info.value.code == 0


def test_validator_lists_every_planted_defect(refcoco, capsys):
    image_dir = refcoco / "images" / IMAGE_DIR
    (image_dir / coco_name(7)).write_bytes(b"garbage")
    good = (coco_name(1), 1, [20, 30, 40, 40], "the red box", [])
    rows = [
        good,
        (coco_name(99), 2, [1, 1, 5, 5], "missing image", []),
        (coco_name(7), 3, [1, 1, 5, 5], "unreadable image", []),
        (coco_name(1), [1, 1, 5, 5], "four fields", []),
        (coco_name(1), 5, ["a", 1, 5, 5], "box is not numbers", []),
        (coco_name(1), 6, [10, 10, 0.5, 5], "degenerate box", []),
        (coco_name(1), 7, [100, 80, 50, 50], "outside the image", []),
        (coco_name(1), 8, [20, 30, 40, 40], "   ", []),
    ]
    train = refcoco / "split" / "unc" / "unc_train.pth"
    torch.save(rows, train)
    (refcoco / "split" / "unc" / "unc_testB.pth").unlink()

    problems = validate("unc", refcoco / "images", refcoco / "split")
    text = "\n".join(problems)
    assert f"{train}[1]: image {image_dir / coco_name(99)} not found" in text
    assert f"{train}[2]: unreadable image {image_dir / coco_name(7)}" in text
    assert f"{train}[3]: malformed tuple: expected a 5-tuple" in text
    assert f"{train}[4]: malformed tuple: box must be 4 finite numbers" in text
    assert f"{train}[5]: degenerate box" in text
    assert f"{train}[6]: box [100.0, 80.0, 150.0, 130.0] outside the 120x90 image" in text
    assert f"{train}[7]: empty phrase" in text
    assert "unc_testB.pth not found" in text
    assert len(problems) == 8
    assert "missing" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        validate_main(["--dataset", "unc", "--data_root", str(refcoco / "images"),
                       "--split_root", str(refcoco / "split")])
    assert exit_info.value.code == 1


def test_validator_reports_a_missing_image_folder(refcoco):
    problems = validate("unc", refcoco / "elsewhere", refcoco / "split", ["val"])
    assert len(problems) == 1 and "image folder" in problems[0] and "elsewhere" in problems[0]


def test_index_with_foreign_pickles_is_refused_clearly(refcoco):
    buffer = io.BytesIO()
    torch.save([(coco_name(1), 1, np.array([1.0, 2, 3, 4]), "numpy box", [])], buffer)
    (refcoco / "split" / "unc" / "unc_val.pth").write_bytes(buffer.getvalue())
    with pytest.raises(RuntimeError, match=r"cannot load index file .*unc_val\.pth"):
        build_dataset("val", args_for(refcoco))
