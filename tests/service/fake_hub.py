"""A stand-in for the Hugging Face hub API, as a real HTTP server process on 127.0.0.1.

It answers the one call the service makes to learn a hub model's current revision,
`HfApi().model_info(repo_id)` (GET /api/models/{org}/{name}, also .../revision/{rev}), the way
the hub does: JSON with `id` and `sha` (the commit), or 404 with X-Error-Code RepoNotFound. A
process pointed at it with HF_ENDPOINT=http://127.0.0.1:PORT (and HF_HUB_OFFLINE=0) resolves
revisions against it through huggingface_hub's own client code.

The test moves a repo to a new commit with PUT /_fake/repos/{org}/{name} {"sha": ...} and reads
what was asked with GET /_fake/requests. Run: python tests/service/fake_hub.py PORT [org/name=sha ...]
"""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LOCK = threading.Lock()
REPOS: dict[str, str] = {}         # repo id -> current sha of main
HISTORY: dict[str, list[str]] = {}  # repo id -> every sha main has pointed at (older revisions stay resolvable)
REQUESTS: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the test reads /_fake/requests instead
        pass

    def _send(self, status: int, body: dict | list, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = unquote(urlsplit(self.path).path)
        if path == "/_fake/requests":
            with LOCK:
                return self._send(200, list(REQUESTS))
        parts = path.strip("/").split("/")
        # /api/models/{org}/{name}[/revision/{rev}]
        if len(parts) in (4, 6) and parts[:2] == ["api", "models"] and (len(parts) == 4 or parts[4] == "revision"):
            repo = f"{parts[2]}/{parts[3]}"
            rev = parts[5] if len(parts) == 6 else "main"
            with LOCK:
                REQUESTS.append({"method": "GET", "path": path, "repo": repo, "revision": rev})
                sha = REPOS.get(repo)
                known = HISTORY.get(repo, [])
            if sha is None:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if rev != "main":
                if rev not in known:
                    return self._send(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
                sha = rev
            return self._send(200, {"_id": repo, "id": repo, "modelId": repo, "sha": sha, "private": False,
                                    "disabled": False, "gated": False, "tags": ["transformers"],
                                    "siblings": [{"rfilename": "config.json"}, {"rfilename": "model.safetensors"}]})
        self._send(404, {"error": "not found"})

    def do_PUT(self):  # noqa: N802
        path = unquote(urlsplit(self.path).path)
        prefix = "/_fake/repos/"
        if not path.startswith(prefix):
            return self._send(404, {"error": "not found"})
        repo = path[len(prefix):]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        with LOCK:
            REPOS[repo] = body["sha"]
            HISTORY.setdefault(repo, []).append(body["sha"])
        self._send(200, {"repo": repo, "sha": body["sha"]})


def main(argv: list[str]) -> None:
    port = int(argv[0])
    for spec in argv[1:]:
        repo, sha = spec.split("=", 1)
        REPOS[repo] = sha
        HISTORY[repo] = [sha]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"fake hub: listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
