"""The browser demo: its requests (inference.app_request) directly, then the page in a real headless Chromium."""
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, noise_image, oriented_copies, write_tiny_checkpoint
from PIL import Image

import predict
from inference import SegVGPredictor
from inference.app_request import MAX_SIDE, RequestError, ground

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TYPED = '<img src=x onerror="document.title=1"> [link](javascript:alert(1)) **bold** _it_ the red circle'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_checkpoint.pth")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return SegVGPredictor.from_checkpoint(checkpoint, "cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return noise_image(tmp_path_factory.mktemp("img") / "photo.png")


def test_request_answers_with_predictor_boxes_masks_and_records(predictor, photo, tmp_path):
    out = ground(predictor, str(photo), "the red circle\n\n  the blue square  \n", 0.5, True, tmp_path / "r")
    expected = predictor.predict([str(photo)] * 2, ["the red circle", "the blue square"])
    assert [row[0] for row in out["rows"]] == ["the red circle", "the blue square"]
    for row, result in zip(out["rows"], expected):
        assert row[1:5] == pytest.approx(result["box"], abs=0.01)
    records = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert records == out["records"] and records[0]["image"] == "photo.png" and records[1]["mask"] == "mask_2.png"
    for record, result in zip(records, expected):
        mask = np.array(Image.open(tmp_path / "r" / record["mask"]))
        assert np.array_equal(mask > 0, result["mask"] > 0.5)
    assert out["image"].width % 150 == 0 and out["image"].height == out["image"].width // 150 * 90


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "P", "I;16"])
def test_uncommon_image_modes_are_converted_and_said(predictor, tmp_path, mode):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    image = image.convert("L").convert("I;16") if mode == "I;16" else image.convert(mode)
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    image.save(path)
    out = ground(predictor, str(path), "the dog", 0.5, False, tmp_path / "r")
    assert len(out["rows"]) == 1 and f"{mode} image converted" in out["notes"][0]


def test_huge_image_is_downscaled_and_said(predictor, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (MAX_SIDE * 2, 64), (10, 200, 30)).save(path)
    out = ground(predictor, str(path), "the dog", 0.5, True, tmp_path / "r")
    assert out["records"][0]["image_size"] == [MAX_SIDE, 32]
    assert any("downscaled" in note for note in out["notes"])
    assert all(0 <= v <= MAX_SIDE for v in out["records"][0]["box"])


def test_long_phrase_is_cut_and_said(predictor, photo, tmp_path):
    out = ground(predictor, str(photo), "the big red circle on the far left of the picture", 0.5, True, tmp_path)
    assert len(out["rows"]) == 1 and any(" cut " in note for note in out["notes"])


@pytest.mark.parametrize("image, text, message", [
    (None, "the dog", "No image"),
    ("photo", "  \n ", "No phrase"),
    ("photo", "\n".join(["a"] * 9), "at most 8"),
    ("corrupt", "the dog", "bad.png cannot be used: not an image: its first bytes are no image format"),
])
def test_bad_requests_are_one_clear_message(predictor, photo, tmp_path, image, text, message):
    (tmp_path / "bad.png").write_bytes(b"not an image" * 20)
    path = {"photo": str(photo), "corrupt": str(tmp_path / "bad.png"), None: None}[image]
    with pytest.raises(RequestError, match=message) as err:
        ground(predictor, path, text, 0.5, True, tmp_path / "r")
    assert str(tmp_path) not in str(err.value)  # never the server's folders


# ---------------------------------------------------------------------------------------------------------------
# The page in a real browser

def start_app(checkpoint, port, data_root):
    command = [sys.executable, "app.py", "--checkpoint", str(checkpoint), "--port", str(port), "--device", "cpu",
               "--data_root", str(data_root)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited: {process.stdout.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError("app.py did not answer within 120 s")


def table_rows(page):
    cells = page.eval_on_selector_all(
        "#table [role=gridcell]", "cells => cells.map(c => [+c.dataset.row, +c.dataset.col, c.innerText.trim()])")
    rows = {}
    for row, col, text in cells:
        rows.setdefault(row, {})[col] = text
    return [[rows[r][c] for c in sorted(rows[r])] for r in sorted(rows)]


def ground_in_page(page, image, phrases, expect):
    if page.locator("#image button[aria-label=Clear]").count():
        page.click("#image button[aria-label=Clear]")
    page.set_input_files("#image input[type=file]", str(image))
    page.fill("#phrases textarea", phrases)
    before = page.inner_text("#status")
    page.click("#ground")
    page.wait_for_function("([before, expect]) => { const text = document.querySelector('#status').innerText; "
                           "return text !== before && text.includes(expect); }", arg=[before, expect], timeout=60_000)
    page.wait_for_timeout(500)  # the table and image render after the status


@pytest.mark.slow
def test_page_in_headless_chromium(checkpoint, photo, tmp_path, capsys):
    pytest.importorskip("gradio", reason="the app's requirements: pip install -r requirements-app.txt")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-app.txt")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt install chromium)")
    expected = predict.main(["--checkpoint", str(checkpoint), "--image", str(photo), "--phrase", "the red circle",
                             "--phrase", "the blue square", "--device", "cpu"])
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"corrupt" * 50)
    port = free_port()
    process = start_app(checkpoint, port, tmp_path / "no_demo_data")
    hosts = set()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#ground")

            ground_in_page(page, photo, "the red circle\nthe blue square", "ms for 2 phrase")
            page.screenshot(path=tmp_path / "1_result.png", full_page=True)
            rows = table_rows(page)
            assert [row[0] for row in rows] == ["the red circle", "the blue square"]
            for row, result in zip(rows, expected):
                box = [float(v) for v in row[1:5]]
                assert box == pytest.approx(result["box"], abs=0.01)
                assert 0 <= box[0] <= box[2] <= 150 and 0 <= box[1] <= box[3] <= 90
            src = page.get_attribute("#result img", "src")
            drawn = np.array(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")).astype(int)
            zoom = drawn.shape[1] // 150
            original = np.array(Image.open(photo)).repeat(zoom, 0).repeat(zoom, 1).astype(int)
            x1, y1, x2, y2 = (round(zoom * v) for v in expected[0]["box"])
            edge = np.abs(drawn - original).sum(-1)[y1:y2 + 1, x1:x2 + 1]
            assert (edge[:, :2] > 0).mean() > 0.5 and (edge[-2:, :] > 0).mean() > 0.5  # the box's outline

            ground_in_page(page, bad, "the dog", "Error")
            page.screenshot(path=tmp_path / "2_corrupt.png", full_page=True)
            assert "bad.png cannot be used: a corrupt PNG" in page.inner_text("#status")
            assert "Traceback" not in page.content()

            # What the user typed is shown as typed: HTML and Markdown in a phrase render as text, nowhere as markup.
            ground_in_page(page, photo, TYPED, "ms for 1 phrase")
            page.screenshot(path=tmp_path / "2_typed.png", full_page=True)
            status = page.locator("#status")
            assert [status.locator(tag).count() for tag in ("img", "a", "strong", "em")] == [0, 0, 0, 0]
            assert TYPED.lower() in page.inner_text("#status")  # the note that cut it quotes it
            assert table_rows(page)[0][0] == TYPED and page.locator("#table img, #table a").count() == 0
            assert page.title() == "SegVG grounding demo"  # no script of the phrase ran

            ground_in_page(page, photo, "the blue square", "ms for 1 phrase")
            page.screenshot(path=tmp_path / "3_after_error.png", full_page=True)
            assert [float(v) for v in table_rows(page)[0][1:5]] == pytest.approx(expected[1]["box"], abs=0.01)
            browser.close()
    finally:
        process.kill()
        process.wait()
    assert hosts == {f"127.0.0.1:{port}"}, f"the page fetched from elsewhere: {hosts}"


def test_api_through_gradio_client(checkpoint, photo, tmp_path, capsys):
    """The app's API as users call it: /ground with the image file and the phrases (one per line), the optional
    inputs at their page defaults; boxes as predict.py gives them; no server folder in any answer or in the page."""
    pytest.importorskip("gradio", reason="the app's requirements: pip install -r requirements-app.txt")
    gradio_client = pytest.importorskip("gradio_client", reason="the app's requirements: pip install -r "
                                                                "requirements-app.txt")
    expected = predict.main(["--checkpoint", str(checkpoint), "--image", str(photo), "--phrase", "the red circle",
                             "--phrase", "the blue square", "--device", "cpu", "--json"])
    capsys.readouterr()
    port = free_port()
    process = start_app(checkpoint, port, tmp_path / "no_demo_data")
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        assert "/ground" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        drawing, table, files, status = client.predict(gradio_client.handle_file(str(photo)),
                                                       "the red circle\nthe blue square", api_name="/ground")
        assert table["headers"] == ["phrase", "x1", "y1", "x2", "y2", "score"]
        assert [row[0] for row in table["data"]] == ["the red circle", "the blue square"]
        for row, result in zip(table["data"], expected):
            assert all(isinstance(v, (int, float)) for v in row[1:5])
            assert row[1:5] == pytest.approx(result["box"], abs=0.01)
        assert Path(drawing).is_file() and len(files) == 3  # predictions.jsonl and a mask per phrase
        assert "best_checkpoint.pth" in status and str(checkpoint.parent) not in status
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10).read().decode()
        assert "best_checkpoint.pth" in page and str(checkpoint.parent) not in page
        # Bad input is an answer too, and the server keeps serving.
        _, _, _, status = client.predict(gradio_client.handle_file(str(photo)), "", api_name="/ground")
        assert "No phrase" in status
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_phone_photos_through_gradio_client(checkpoint, tmp_path, capsys):
    """A photo stored sideways with its EXIF orientation tag gives, through the app's API, the boxes and image_size of
    the upright photo (predict.py's), for each of the 8 tags, and the page says what it did."""
    pytest.importorskip("gradio", reason="the app's requirements: pip install -r requirements-app.txt")
    gradio_client = pytest.importorskip("gradio_client", reason="the app's requirements: pip install -r "
                                                                "requirements-app.txt")
    upright = np.random.default_rng(1).integers(0, 255, (88, 96, 3), dtype=np.uint8)
    photos = oriented_copies(upright, tmp_path)
    expected = predict.main(["--checkpoint", str(checkpoint), "--image", str(photos["upright"]), "--phrase",
                             "the red circle", "--device", "cpu", "--json"])[0]
    capsys.readouterr()
    port = free_port()
    process = start_app(checkpoint, port, tmp_path / "no_demo_data")
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        for orientation in range(1, 9):
            _, table, files, status = client.predict(gradio_client.handle_file(str(photos[orientation])),
                                                     "the red circle", api_name="/ground")
            assert table["data"][0][1:5] == pytest.approx(expected["box"], abs=1), orientation
            record = json.loads(Path(files[0]).read_text().splitlines()[0])
            assert record["image_size"] == [96, 88] and record.get("exif_orientation", 1) == orientation
            assert (f"EXIF orientation {orientation}: the photo was turned" in status) == (orientation != 1)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
