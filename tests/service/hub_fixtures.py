"""The fake hub (tests/service/fake_hub.py) in a thread of the test process (`hub`) or as a
process of its own for real workers to use (`fake_hub`), and the helpers the hub download tests
share (test_hub_download.py, test_hub_download_faults.py, test_hub_schedules.py, test_hub_wait.py)."""
from __future__ import annotations

import json
import secrets
import sys
import threading
import types
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from . import fake_hub as fake_hub_server
from .conftest import free_port, wait_for

REPO, SHA_1 = "acme/tiny-bert", "1" * 8 + secrets.token_hex(16)   # what the `fake_hub` process starts with


def new_sha() -> str:
    return secrets.token_hex(20)


def commit_files(folder: Path, marker: str, weights: bool = True) -> Path:
    """A repo commit: what from_pretrained needs, plus files the worker must never fetch."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "marker": marker}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    if weights:
        (folder / "model.safetensors").write_bytes(marker.encode() * 10)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle: must never be downloaded")
    (folder / "modeling_custom.py").write_text("raise SystemExit('remote code must never be downloaded')\n")
    (folder / "README.md").write_text("# card\n")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.safetensors").write_bytes(b"a sub-folder from_pretrained does not read")
    return folder


@pytest.fixture
def hub(monkeypatch):
    """The fake hub on a free port, and huggingface_hub switched online for this test only (the
    test session sets HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake_hub_server.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    start = len(fake_hub_server.REQUESTS)
    yield types.SimpleNamespace(url=url, requests=lambda: fake_hub_server.REQUESTS[start:])
    server.shutdown()
    server.server_close()


def children() -> list[int]:
    """This test process's live children (Linux /proc, zombies left out): the download's child must be gone."""
    pids = [int(pid) for f in Path("/proc/self/task").glob("*/children") for pid in f.read_text().split()]
    alive = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                alive.append(pid)
        except (OSError, IndexError):   # gone meanwhile
            pass
    return alive


def leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def scripted(monkeypatch, outcomes: list[dict]):
    """download_revision with the child's outcomes scripted and the waits recorded, not slept."""
    from huggingface_hub import constants

    from worker import hub_download

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_download, "_from_cache", lambda *a: None)
    monkeypatch.setattr(hub_download, "_fetch_in_child", lambda *a: outcomes.pop(0))
    waits: list[float] = []
    monkeypatch.setattr(hub_download, "_wait", lambda seconds, check, poll: waits.append(seconds))
    return waits


def failed(status: int, retry_after: str | None = None) -> dict:
    return {"ok": False, "kind": "transient", "type": "HfHubHTTPError", "status": status,
            "message": f"{status} Server Error", "retry_after": retry_after}


# ------------------------------------------------------------------ the fake hub as a process

class FakeHub:
    def __init__(self, proc, port: int):
        self.proc, self.url = proc, f"http://127.0.0.1:{port}"

    def set_sha(self, repo: str, sha: str, files: Path | None = None) -> None:
        """Move main to `sha`; `files`: the folder whose files that commit serves."""
        body = {"sha": sha, **({"dir": str(files)} if files else {})}
        req = urllib.request.Request(f"{self.url}/_fake/repos/{repo}", data=json.dumps(body).encode(),
                                     method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def fault(self, repo: str, **fault) -> None:
        """An outage or a slow link for `repo` (tests/service/fake_hub.py's PUT /_fake/faults)."""
        req = urllib.request.Request(f"{self.url}/_fake/faults/{repo}", data=json.dumps(fault).encode(),
                                     method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def requests(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/_fake/requests", timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture
def fake_hub(start_proc):
    port = free_port()
    script = Path(fake_hub_server.__file__)
    proc = start_proc([sys.executable, str(script), str(port), f"{REPO}={SHA_1}"], {"PATH": "/usr/bin:/bin"},
                      "fake-hub")
    wait_for(lambda: "listening" in proc.output() or proc.p.poll() is not None, 30, what="fake hub ready")
    assert proc.p.poll() is None, proc.output()
    return FakeHub(proc, port)


def submit_hub_job(http, db_url: str, hub: FakeHub, repo: str, files: Path, dataset_id: str, **fault) -> str:
    """A job on hub `repo` at a new commit serving `files` (and `fault`, if any), with that sha
    recorded as a schedule's firing would (the in-process API is offline and records none). The
    caller sends it to a worker."""
    from api.db import session_scope
    from api.models import Job

    from .jobpath import BUDGET, FAST_OPTIONS

    sha = secrets.token_hex(20)
    hub.set_sha(repo, sha, files)
    hub.fault(repo, **fault)
    r = http.post("/v1/jobs", json={"model": repo, "dataset": dataset_id, "budget": BUDGET, "options": FAST_OPTIONS})
    assert r.status_code == 202, r.text
    with session_scope(db_url) as s:
        row = s.get(Job, r.json()["id"])
        row.request = {**row.request, "model_source": {**row.request["model_source"], "revision": sha}}
    return row.id


@pytest.fixture
def settled_job_id(client, service_settings):
    """A queued hub job row (as test_claims.job_id) that is ended when the test is over: one left
    queued or running in the session's database would be re-sent by a later test's reaper and
    run by its worker (against that test's fake hub)."""
    from sqlalchemy import update

    from api.db import session_scope
    from api.models import Job

    r = client.post("/v1/jobs", json={"model": "org/some-bert", "dataset": "tweet-sentiment",
                                      "budget": {"kind": "params", "target": 0.5}})
    assert r.status_code == 202, r.text
    yield r.json()["id"]
    with session_scope(service_settings.db_url) as s:
        s.execute(update(Job).where(Job.id == r.json()["id"], Job.status.in_(("queued", "running")))
                  .values(status="cancelled", cancel_requested=True, retry_at=None, lease_expires_at=None))
