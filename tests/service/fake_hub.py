"""A stand-in for the Hugging Face hub API, as a real HTTP server process on 127.0.0.1.

It answers, the way the hub does, the calls the service makes through huggingface_hub's own
client code (a process pointed at it with HF_ENDPOINT=http://127.0.0.1:PORT and HF_HUB_OFFLINE=0):

- `HfApi().model_info(repo_id[, revision])`: GET /api/models/{org}/{name}[/revision/{rev}] ->
  JSON with `id`, `sha` (the commit) and `siblings` (the files of that commit);
- `snapshot_download(repo_id, revision=sha)`: GET /api/models/{org}/{name}/tree/{rev} (the file
  listing: type, path, size, oid), then per file HEAD + GET /{org}/{name}/resolve/{rev}/{file}
  with the headers huggingface_hub checks (X-Repo-Commit, ETag, Content-Length).

Errors carry the hub's X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound), which
huggingface_hub turns into its typed exceptions.

A commit's files are the files under a local folder given with it. The test moves a repo's main
to a new commit with PUT /_fake/repos/{org}/{name} {"sha": ..., "dir": "/path/to/files"} (older
commits stay resolvable by sha) and reads what was asked with GET /_fake/requests (each entry's
`at`: the server's time.time() when the request arrived).

Outages and slow links, per repo, with PUT /_fake/faults/{org}/{name}:
- {"status": 503, "count": N}: the next N file transfers (GET .../resolve/...; -1: all of them)
  answer that status. Only transfers: huggingface_hub retries metadata calls (listing, HEAD)
  itself for ~20 s, but not a transfer answered 5xx, so this is the outage the worker's own
  retry has to bridge, without a test waiting out the client's backoff.
- {"status": 403, "count": -1, "every": true, "code": "GatedRepo"}: every request of the repo
  answers that (with that X-Error-Code): a definite refusal.
- with "kinds": a list of "tree" (the listing), "info", "head" (a file's metadata), "transfer":
  the status answers those requests only (huggingface_hub would retry the metadata ones itself,
  had the worker not taken that away: tests count the requests to show it did).
- a status fault with "retry_after": "2" (or an HTTP date) also sends that Retry-After header;
  with "ratelimit_reset": N, the hub's RateLimit header saying no request is left for N s;
  with "retry_after_in": N, an HTTP date N s after the answer (a date fixed in advance may be
  past by the time a slow client gets its answer). The entry's `retry_after`: the value sent.
- {"hang": true}: every request of the repo is read and never answered (a hub stuck behind a
  load balancer: the client sits in a blocking read); the handler waits for the client to close
  the connection and records when in the entry's `closed`.
- {"bytes_per_second": B}: file transfers trickle at that rate (a multi-GB file on a slow link).
- {"cut_after": N, "then": {...}[, "file": name]}: the next file transfer (of that file) sends its headers (the full length)
  and N bytes of the body, then closes the connection (a link that broke mid-file); then the
  fault `then` applies (e.g. a 503: the transfer cannot be resumed at once). Entry: `cut`: N.
- a transfer with a `Range: bytes=N-` header is answered 206 from byte N, as the hub's CDN does;
  the entry's `range`: the header as sent.
- {}: back to normal.
Run: python tests/service/fake_hub.py PORT [org/name=sha[=DIR] ...]
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LOCK = threading.Lock()
REPOS: dict[str, str] = {}         # repo id -> current sha of main
HISTORY: dict[str, list[str]] = {}  # repo id -> every sha main has pointed at (older revisions stay resolvable)
FILES: dict[tuple[str, str], str] = {}  # (repo id, sha) -> folder holding that commit's files
REQUESTS: list[dict] = []
FAULTS: dict[str, dict] = {}       # repo id -> the fault set with PUT /_fake/faults/{repo}


def _files(folder: str | None) -> dict[str, Path]:
    if not folder:
        return {}
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _git_oid(data: bytes) -> str:
    """A git blob id, what the hub reports as a (non-LFS) file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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
        if self.command != "HEAD":
            self.wfile.write(data)

    def _commit(self, repo: str, rev: str) -> tuple[str | None, dict | None]:
        """(sha, None) for a known repo and revision, else (None, the error to send)."""
        with LOCK:
            sha, known = REPOS.get(repo), HISTORY.get(repo, [])
        if sha is None:
            return None, {"status": 404, "body": {"error": "Repository not found"},
                          "headers": {"X-Error-Code": "RepoNotFound"}}
        if rev != "main":
            if rev not in known:
                return None, {"status": 404, "body": {"error": f"Invalid rev id: {rev}"},
                              "headers": {"X-Error-Code": "RevisionNotFound"}}
            sha = rev
        return sha, None

    def _record(self, path: str, repo: str, rev: str, **extra) -> dict:
        entry = {"method": self.command, "path": path, "repo": repo, "revision": rev, "at": time.time(), **extra}
        with LOCK:
            REQUESTS.append(entry)
        return entry

    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self):  # noqa: N802
        path = unquote(urlsplit(self.path).path)
        if path == "/_fake/requests":
            with LOCK:
                return self._send(200, list(REQUESTS))
        parts = path.strip("/").split("/")
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            return self._api(path, parts)
        if len(parts) >= 5 and parts[2] == "resolve":   # /{org}/{name}/resolve/{rev}/{file...}
            return self._resolve(path, parts)
        self._send(404, {"error": "not found"})

    def _api(self, path: str, parts: list[str]) -> None:
        repo, rest = f"{parts[2]}/{parts[3]}", parts[4:]
        if rest and rest[0] == "tree" and len(rest) >= 2:     # /api/models/{repo}/tree/{rev}[/{folder}]
            kind, rev = "tree", rest[1]
        elif not rest or (rest[0] == "revision" and len(rest) == 2):
            kind, rev = "info", rest[1] if rest else "main"
        else:
            return self._send(404, {"error": "not found"})
        entry = self._record(path, repo, rev, **({"kind": "tree"} if kind == "tree" else {}))
        if self._fault(repo, entry, kind):
            return
        sha, error = self._commit(repo, rev)
        if error:
            return self._send(error["status"], error["body"], error["headers"])
        with LOCK:
            files = _files(FILES.get((repo, sha)))
        if kind == "tree":
            folder = "/".join(rest[2:])
            listing = [{"type": "file", "path": name, "size": p.stat().st_size, "oid": _git_oid(p.read_bytes())}
                       for name, p in files.items() if not folder or name.startswith(folder + "/")]
            return self._send(200, listing)
        siblings = [{"rfilename": name} for name in files] or [{"rfilename": "config.json"},
                                                               {"rfilename": "model.safetensors"}]
        self._send(200, {"_id": repo, "id": repo, "modelId": repo, "sha": sha, "private": False,
                         "disabled": False, "gated": False, "tags": ["transformers"], "siblings": siblings})

    def _resolve(self, path: str, parts: list[str]) -> None:
        repo, rev, name = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        asked_range = self.headers.get("Range") if self.command == "GET" else None
        entry = self._record(path, repo, rev, file=name, **({"range": asked_range} if asked_range else {}))
        if self._fault(repo, entry, "transfer" if self.command == "GET" else "head"):
            return
        sha, error = self._commit(repo, rev)
        if error:
            return self._send(error["status"], error["body"], error["headers"])
        with LOCK:
            file = _files(FILES.get((repo, sha))).get(name)
        if file is None:
            return self._send(404, {"error": f"Entry not found: {name}"},
                              {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
        data = file.read_bytes()
        start = int(asked_range[len("bytes="):].split("-")[0]) if asked_range else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("ETag", f'"{_git_oid(data)}"')
        self.send_header("X-Repo-Commit", sha)
        self.end_headers()
        if self.command == "HEAD":
            return
        data = data[start:]
        with LOCK:
            fault = FAULTS.get(repo, {})
            cut, rate = fault.get("cut_after"), fault.get("bytes_per_second")
            if fault.get("file") not in (None, name):
                cut = None
            if cut is not None:   # used up: what comes next applies
                FAULTS[repo] = dict(fault.get("then") or {})
                entry["cut"] = cut
        if cut is not None:
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True   # (the server closes it: the client gets less than announced)
            return
        if not rate:
            return self.wfile.write(data)
        step = max(1, int(rate) // 10)   # ten writes a second
        try:
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(step / rate)
        except (BrokenPipeError, ConnectionResetError):   # the client went away (a cancelled job)
            self.close_connection = True

    def _fault(self, repo: str, entry: dict, kind: str) -> bool:
        """Answer with the repo's fault status instead, if one applies to this request (and count
        it); the request's entry in REQUESTS gets `fault`: the status sent."""
        with LOCK:
            fault = FAULTS.get(repo, {})
            hang = bool(fault.get("hang"))
        if hang:
            entry["hang"] = True
            self.close_connection = True
            try:
                while self.connection.recv(4096):   # b"": the client closed its end, or its process died
                    pass
            except OSError:
                pass
            entry["closed"] = time.time()
            return True
        with LOCK:
            applies = kind in fault["kinds"] if fault.get("kinds") else kind == "transfer" or fault.get("every")
            if not fault.get("status") or not applies or fault.get("count", -1) == 0:
                return False
            if fault.get("count", -1) > 0:
                fault["count"] -= 1
            entry["fault"] = fault["status"]
        headers = {"X-Error-Code": fault["code"]} if fault.get("code") else {}
        if fault.get("retry_after_in") is not None:
            headers["Retry-After"] = formatdate(time.time() + fault["retry_after_in"], usegmt=True)
        elif fault.get("retry_after") is not None:
            headers["Retry-After"] = str(fault["retry_after"])
        if fault.get("ratelimit_reset") is not None:
            headers["RateLimit"] = f'"api";r=0;t={fault["ratelimit_reset"]}'
            headers["RateLimit-Policy"] = '"fixed window";"api";q=500;w=300'
        if "Retry-After" in headers:
            entry["retry_after"] = headers["Retry-After"]
        self._send(fault["status"], {"error": f"fake outage ({fault['status']})"}, headers)
        return True

    def do_PUT(self):  # noqa: N802
        path = unquote(urlsplit(self.path).path)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if path.startswith("/_fake/faults/"):
            repo = path[len("/_fake/faults/"):]
            with LOCK:
                FAULTS[repo] = body
            return self._send(200, {"repo": repo, "fault": body})
        prefix = "/_fake/repos/"
        if not path.startswith(prefix):
            return self._send(404, {"error": "not found"})
        repo = path[len(prefix):]
        _add_commit(repo, body["sha"], body.get("dir"))
        self._send(200, {"repo": repo, "sha": body["sha"]})


def _add_commit(repo: str, sha: str, folder: str | None) -> None:
    with LOCK:
        REPOS[repo] = sha
        HISTORY.setdefault(repo, []).append(sha)
        if folder:
            FILES[(repo, sha)] = folder


def main(argv: list[str]) -> None:
    port = int(argv[0])
    for spec in argv[1:]:
        repo, sha, *folder = spec.split("=", 2)
        _add_commit(repo, sha, folder[0] if folder else None)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"fake hub: listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
