"""A stand-in for the Hugging Face Hub on 127.0.0.1, enough for huggingface_hub's snapshot_download (repository and
revision info, the file tree, HEAD and GET of a file at a commit), so that loading a Hub id is tested with no
network."""
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class StandInHub:
    """Repositories of files at commits, with named revisions (branches, tags) pointing at commits."""

    def __init__(self):
        self.refs, self.commits, self.requests = {}, {}, []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, repo_id, files, revisions=("main",)):
        """files: {name: bytes} -> the commit id, which revisions now name."""
        commit = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items()))
                              .encode()).hexdigest()
        self.commits[commit] = dict(files)
        for revision in revisions:
            self.refs.setdefault(repo_id, {})[revision] = commit
        return commit

    def close(self):
        self.server.shutdown()


def _handler(hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, body=b"", headers=None):
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def commit_of(self, repo_id, revision):
            refs = hub.refs.get(repo_id)
            if refs is None:
                return None, "RepoNotFound"
            commit = refs.get(revision) or (revision if revision in hub.commits else None)
            return commit, None if commit else "RevisionNotFound"

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            hub.requests.append((self.command, self.path))
            parts = unquote(urlparse(self.path).path).strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 5:  # revision info or the file tree
                repo_id, kind, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:]) or "main"
                commit, error = self.commit_of(repo_id, revision)
                if error:
                    return self.reply(404, json.dumps({"error": error}).encode(), {"X-Error-Code": error})
                files = hub.commits[commit]
                body = ({"id": repo_id, "sha": commit, "private": False,
                         "siblings": [{"rfilename": name} for name in files]} if kind == "revision" else
                        [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                         for name, data in files.items()])
                return self.reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
            if len(parts) >= 5 and parts[2] == "resolve":  # a file at a revision
                commit, error = self.commit_of("/".join(parts[:2]), parts[3])
                name = "/".join(parts[4:])
                if error or name not in hub.commits[commit]:
                    return self.reply(404, b"", {"X-Error-Code": error or "EntryNotFound"})
                data = hub.commits[commit][name]
                return self.reply(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
            self.reply(404)
    return Handler
