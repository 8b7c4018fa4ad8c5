"""tools/fetch_official.py against a stand-in HTTP server on 127.0.0.1 (no network): a download cut halfway resumes
where it stopped and the checkpoint is checked; a damaged file is refused and moved aside; Drive's quota page is named
with the way to fetch the file by hand."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_pretrained import official_checkpoint

from tools import fetch_official

QUOTA_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body><p "
              b"class=\"uc-error-subcaption\">Too many users have viewed or downloaded this file recently. Please try "
              b"accessing the file again later.</p></body></html>")


class Files:
    """Paths served with Range support; a path in `cut` sends half of its bytes, then closes, the first time."""

    def __init__(self, files, cut=()):
        self.files, self.cut, self.ranges = files, set(cut), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = outer.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                start = int(self.headers.get("Range", "bytes=0-")[6:].split("-")[0] or 0)
                outer.ranges.append((self.path, start))
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "text/html" if data.startswith(b"<!") else "application/octet-stream")
                self.end_headers()
                if self.path in outer.cut:
                    outer.cut.discard(self.path)
                    self.wfile.write(data[start:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def served(tmp_path):
    pytest.importorskip("gdown", reason="pip install -r requirements-fetch.txt")
    data = official_checkpoint(tmp_path / "source" / "best_checkpoint.pth").read_bytes()
    files = Files({"/good.pth": data, "/cut.pth": data, "/damaged.pth": data[:len(data) // 3], "/quota": QUOTA_PAGE},
                  cut={"/cut.pth"})
    yield files
    files.server.shutdown()


def fetch(served, tmp_path, path):
    return fetch_official.main(["--dataset", "unc", "--output_dir", str(tmp_path / "ckpt"), "--url",
                                served.url + path])


def test_a_cut_download_resumes_and_is_checked(served, tmp_path, capsys):
    with pytest.raises(fetch_official.FetchError, match="stopped .*run the same command again, it resumes"):
        fetch(served, tmp_path, "/cut.pth")
    target = tmp_path / "ckpt" / "unc" / "best_checkpoint.pth"
    assert not target.exists() and list(target.parent.glob("*.part"))
    assert fetch(served, tmp_path, "/cut.pth") == 0
    assert [start for path, start in served.ranges if path == "/cut.pth"][-1] > 0  # the second asked for the rest
    assert target.read_bytes() == served.files["/cut.pth"]
    out = capsys.readouterr().out
    assert "an official checkpoint, loads with weights_only, every key converted" in out
    assert "not the paper's 186,331,333" in out and not list(target.parent.glob("*.part"))


def test_a_damaged_file_is_refused_and_moved_aside(served, tmp_path):
    with pytest.raises(fetch_official.FetchError, match="is refused .*truncated or corrupt.*moved aside"):
        fetch(served, tmp_path, "/damaged.pth")
    folder = tmp_path / "ckpt" / "unc"
    assert not (folder / "best_checkpoint.pth").exists() and (folder / "best_checkpoint.pth.corrupt").is_file()
    assert fetch(served, tmp_path, "/good.pth") == 0  # the next run fetches it anew


def test_the_quota_page_is_named_with_the_manual_route(served, tmp_path):
    with pytest.raises(fetch_official.FetchError) as refused:
        fetch(served, tmp_path, "/quota")
    message = str(refused.value)
    assert "Google Drive refuses ckpt/unc/best_checkpoint.pth for now (its download quota: too many users)" in message
    assert fetch_official.FOLDER_URL in message and "run this command again to check it" in message
    assert not (tmp_path / "ckpt" / "unc" / "best_checkpoint.pth").exists()
