"""The worker's download of a hub job's recorded revision (worker/hub_download.py), against the fake
hub server (tests/service/fake_hub.py, here in a thread of the test process) through
huggingface_hub's own client: the recorded sha is fetched, not `main`; only safetensors, JSON
and tokenizer files; a revision the hub does not have fails with a message for the user.
Issue #14's robustness: a cancel stops a slow transfer within seconds and leaves no file; a hub
answering 503 is waited for (bounded), a definite refusal is not."""
from __future__ import annotations

import json
import secrets
import socket
import threading
import time
import types
from pathlib import Path

import pytest

from vtrans_core.errors import CompressionError
from worker.hub_download import download_revision

from . import fake_hub
from .conftest import wait_for
from .hub_fixtures import children, commit_files, hub, leftovers, new_sha  # noqa: F401 (hub: a fixture)

REPO = "acme/tiny-bert"


def test_downloads_the_recorded_sha_not_main_and_only_safe_files(hub, tmp_path):
    repo = f"acme/{secrets.token_hex(4)}"
    sha_a, sha_b = new_sha(), new_sha()
    fake_hub._add_commit(repo, sha_a, str(commit_files(tmp_path / "a", "commit-a")))
    fake_hub._add_commit(repo, sha_b, str(commit_files(tmp_path / "b", "commit-b")))   # main moves on

    folder = download_revision(repo, sha_a, tmp_path / "work" / "hub-model", endpoint=hub.url,
                               cache_dir=tmp_path / "hf-cache")

    assert folder == (tmp_path / "work" / "hub-model").resolve()
    assert json.loads((folder / "config.json").read_text())["marker"] == "commit-a"
    assert (folder / "model.safetensors").read_bytes() == b"commit-a" * 10
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.is_file() and ".cache" not in p.relative_to(folder).parts}
    assert files == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    asked = [r for r in hub.requests() if r["repo"] == repo]
    fetched = {r["file"] for r in asked if "file" in r}
    assert fetched == files                                    # nothing else was even requested
    assert {r["revision"] for r in asked} == {sha_a}           # never `main`, never sha_b
    assert not (tmp_path / "hf-cache").exists() or not any((tmp_path / "hf-cache").rglob("*.safetensors"))


def test_a_revision_the_hub_does_not_have_fails_with_a_message(hub, tmp_path):
    repo = f"acme/{secrets.token_hex(4)}"
    fake_hub._add_commit(repo, new_sha(), str(commit_files(tmp_path / "a", "commit-a")))
    gone = new_sha()
    with pytest.raises(CompressionError) as info:
        download_revision(repo, gone, tmp_path / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache")
    assert info.value.field == "model"
    assert f"{repo!r} at revision {gone}" in info.value.message
    assert "no such revision" in info.value.message


def test_an_unknown_repository_fails_with_a_message(hub, tmp_path):
    with pytest.raises(CompressionError) as info:
        download_revision(f"acme/{secrets.token_hex(4)}", new_sha(), tmp_path / "dest", endpoint=hub.url,
                          cache_dir=tmp_path / "hf-cache")
    assert "repository not found" in info.value.message


def test_a_commit_with_pickled_weights_only_is_refused(hub, tmp_path):
    repo = f"acme/{secrets.token_hex(4)}"
    sha = new_sha()
    fake_hub._add_commit(repo, sha, str(commit_files(tmp_path / "a", "commit-a", weights=False)))
    with pytest.raises(CompressionError) as info:
        download_revision(repo, sha, tmp_path / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache")
    assert "has no safetensors weights" in info.value.message
    assert not any(r.get("file", "").endswith(".bin") for r in hub.requests())


def test_offline_uses_the_cached_snapshot_of_that_commit_or_says_why_not(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants, snapshot_download

    repo = f"acme/{secrets.token_hex(4)}"
    sha_a, sha_b = new_sha(), new_sha()
    fake_hub._add_commit(repo, sha_a, str(commit_files(tmp_path / "a", "commit-a")))
    fake_hub._add_commit(repo, sha_b, str(commit_files(tmp_path / "b", "commit-b")))
    cache = tmp_path / "hf-cache"
    snapshot_download(repo, revision=sha_b, cache_dir=cache, endpoint=hub.url)   # only B is cached
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    asked = len(hub.requests())

    folder = download_revision(repo, sha_b, tmp_path / "dest", endpoint=hub.url, cache_dir=cache)
    assert json.loads((folder / "config.json").read_text())["marker"] == "commit-b"
    with pytest.raises(CompressionError) as info:     # A is not in the cache: B is no substitute
        download_revision(repo, sha_a, tmp_path / "dest2", endpoint=hub.url, cache_dir=cache)
    assert "HF_HUB_OFFLINE" in info.value.message and "cache has no copy" in info.value.message
    assert len(hub.requests()) == asked                 # offline means no request at all


def test_the_runner_downloads_a_hub_jobs_recorded_revision_and_only_then(tmp_path, monkeypatch):
    """No recorded revision: the hub ID goes to compress() as before. A recorded one: the folder
    of that revision does, and the model card still names the hub ID, with the revision."""
    from api.models import Job
    from worker import runner

    calls, options = [], []
    monkeypatch.setattr(runner, "download_revision", lambda repo, rev, dest, **kw:
                        calls.append((repo, rev, dest)) or options.append(kw) or Path("/downloaded"))
    settings = types.SimpleNamespace(db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", hub_download_attempts=4,
                                     hub_retry_seconds=30.0, cancel_check_seconds=0.5, hub_requeue_after_seconds=7.0,
                                     work_dir=tmp_path / "data" / "work")
    sha = new_sha()

    hub_state = {"attempts": 1, "waited": 40.0, "started": 1.0}   # an earlier run's (jobstore.defer)

    def job(revision):
        return Job(id="job_x", model=REPO, dataset="tweet-sentiment", hub_state=hub_state,
                   request={"model": REPO, "model_source": {"ref": REPO, "name": None, "version": None,
                                                            "revision": revision}})

    notes = []
    assert runner._inputs(settings, None, job(None), tmp_path / "w", notes.append)[0] == REPO
    assert calls == [] and notes == []
    check = lambda: None
    assert runner._inputs(settings, None, job(sha), tmp_path / "w", notes.append, check)[0] == "/downloaded"
    # Not in the attempt's folder: kept for the job's next run here (worker/hub_downloads.py).
    dest = tmp_path / "data" / "work" / "job_x" / "hub-download" / f"{REPO.replace('/', '--')}@{sha}"
    assert calls == [(REPO, sha, dest)] and sha in notes[0]
    # The job's cancel check, the operator's retry settings and the job's hub waits so far reach the download.
    assert options == [{"check": check, "note": notes.append, "attempts": 4, "retry_seconds": 30.0,
                        "poll_seconds": 0.5, "defer_after": 7.0, "state": hub_state}]

    source = runner._source(settings.db_url, job(sha))
    assert source.model_name == REPO and source.hub_id == REPO and sha in source.model_label
    assert runner._source(settings.db_url, job(None)).model_label == REPO


# ------------------------------------------------------------------ cancel and outages

def test_a_cancel_during_a_slow_download_ends_it_within_seconds_and_leaves_nothing(hub, tmp_path):
    """A 4 MB weights file at 40 KB/s takes ~100 s: the cancel must end it in seconds, kill the
    transfer (no process left writing) and remove what had arrived."""
    from vtrans_core.errors import CompressionCancelled

    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    files = commit_files(tmp_path / "a", "commit-a")
    (files / "model.safetensors").write_bytes(b"\0" * (4 * 1024 * 1024))
    fake_hub._add_commit(repo, sha, str(files))
    fake_hub.FAULTS[repo] = {"bytes_per_second": 40_000}
    cancelled, at = threading.Event(), []

    def cancel_once_the_weights_flow():
        wait_for(lambda: any(r.get("file") == "model.safetensors" and r["method"] == "GET"
                             for r in hub.requests()), 120, 0.1, what="the weights transfer")
        time.sleep(1.0)   # some bytes are on disk by now
        at.append(time.monotonic())
        cancelled.set()

    def check():
        if cancelled.is_set():
            raise CompressionCancelled("cancelled")

    threading.Thread(target=cancel_once_the_weights_flow, daemon=True).start()
    work = tmp_path / "work"
    with pytest.raises(CompressionCancelled):
        download_revision(repo, sha, work / "hub-model", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                          attempts=3, retry_seconds=10, check=check, poll_seconds=0.2)
    assert time.monotonic() - at[0] < 5, "the cancel was not noticed during the transfer"
    assert children() == []               # the downloading process is gone
    assert leftovers(work) == []          # no partial file, no result or log file
    time.sleep(1.0)
    assert leftovers(work) == []          # and nothing writes there any more


def test_a_hub_answering_503_a_few_times_is_waited_for_then_used(hub, tmp_path):
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    fake_hub._add_commit(repo, sha, str(commit_files(tmp_path / "a", "commit-a")))
    fake_hub.FAULTS[repo] = {"status": 503, "count": 2}
    notes = []

    folder = download_revision(repo, sha, tmp_path / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                               attempts=4, retry_seconds=1.4, note=notes.append, poll_seconds=0.1)

    assert (folder / "model.safetensors").read_bytes() == b"commit-a" * 10
    assert len([r for r in hub.requests() if r.get("fault") == 503]) == 2
    assert len(notes) == 2 and all(n.startswith(f"waiting on the Hugging Face hub ({hub.url})") for n in notes)
    assert "attempt 1 of 4 failed" in notes[0] and "503" in notes[0] and "retrying in" in notes[0]


def test_a_hub_down_throughout_fails_after_the_bounded_retries_naming_the_hub_and_the_error(hub, tmp_path):
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    fake_hub._add_commit(repo, sha, str(commit_files(tmp_path / "a", "commit-a")))
    fake_hub.FAULTS[repo] = {"status": 503, "count": -1}
    notes = []
    started = time.monotonic()
    with pytest.raises(CompressionError) as info:
        download_revision(repo, sha, tmp_path / "work" / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                          attempts=3, retry_seconds=1.5, note=notes.append, poll_seconds=0.1)
    assert time.monotonic() - started >= 1.5                  # the waits 0.5 + 1.0 s happened
    assert len([r for r in hub.requests() if r.get("fault") == 503]) == 3   # three attempts, no more
    assert len(notes) == 2
    message = info.value.message
    assert info.value.field == "model" and f"{repo!r} at revision {sha}" in message
    assert f"the Hugging Face hub ({hub.url})" in message and "after 3 attempts" in message
    assert "503" in message and "cache has no copy" in message
    assert leftovers(tmp_path / "work") == []


@pytest.mark.parametrize("fault, says", [
    (None, "no such revision"),                                                   # 404 RevisionNotFound
    ({"status": 403, "count": -1, "every": True, "code": "GatedRepo"}, "gated"),  # 403 gated repo
    ({"status": 401, "count": -1, "every": True}, "access denied"),               # 401 without a hub error code
])
def test_a_definite_refusal_fails_at_once_without_retrying(hub, tmp_path, fault, says):
    repo = f"acme/{secrets.token_hex(4)}"
    fake_hub._add_commit(repo, new_sha(), str(commit_files(tmp_path / "a", "commit-a")))
    sha = new_sha() if fault is None else fake_hub.REPOS[repo]
    if fault:
        fake_hub.FAULTS[repo] = fault
    notes = []
    with pytest.raises(CompressionError) as info:
        download_revision(repo, sha, tmp_path / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                          attempts=5, retry_seconds=600, note=notes.append, poll_seconds=0.1)
    assert says in info.value.message and info.value.field == "model"
    assert notes == []                                            # no "waiting on the hub"
    assert len([r for r in hub.requests() if r["repo"] == repo and r.get("kind") == "tree"]) == 1


def test_a_refused_connection_counts_as_transient():
    """Connection refused, as the hub client reports it (wrapped in "not in the cache either")."""
    from huggingface_hub.utils import LocalEntryNotFoundError, get_session

    from worker.hub_fetch import classify

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/api/models/acme/x"
    try:
        try:
            get_session().get(closed, timeout=5)
        except Exception as err:
            raise LocalEntryNotFoundError("cannot find the files on the hub nor in the cache") from err
    except Exception as wrapped:
        assert classify(wrapped)["kind"] == "transient", classify(wrapped)
    assert classify(ValueError("disk full?"))["kind"] == "error"
