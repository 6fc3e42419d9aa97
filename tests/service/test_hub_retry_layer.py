"""The worker's download loop is the only layer that retries the hub (issue #14).

huggingface_hub 2.x retries 408/429/5xx, timeouts and network errors itself (utils/_http.py
http_backoff: the file listing, the second HEAD pass of hf_hub_download; the transfer's GET on
408/429), sleeping up to 5 times per request, a Retry-After or RateLimit reset each time. The
download child replaces its HTTP client through the documented huggingface_hub.set_client_factory
(worker/hub_fetch.use_one_retry_layer) so that each failure reaches the worker's loop at once:
counted here with the fake hub's request log, one faulted request per attempt of ours. Xet-backed
repos: hf_xet's Rust client retries on its own; the child runs with xet transfers off and those
retries at none (hub_download.CHILD_ENV), checked as the installed packages read the environment."""
from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time

import pytest

from vtrans_core.errors import CompressionError
from worker import hub_download
from worker.hub_download import download_revision

from . import fake_hub
from .hub_fixtures import commit_files, hub, leftovers, new_sha  # noqa: F401 (hub: a fixture)


def _repo(tmp_path, **fault) -> tuple[str, str]:
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    fake_hub._add_commit(repo, sha, str(commit_files(tmp_path / "a", "commit-a")))
    fake_hub.FAULTS[repo] = fault
    return repo, sha


@pytest.mark.parametrize("kind, status, retry_after", [
    ("tree", 429, "1"),       # the listing: http_backoff would make 6 requests, sleeping 2 s between
    ("tree", 503, None),      # ... or 1, 2, 4, 8, 8 s
    ("head", 503, None),      # a file's HEAD: hf_hub_download's second pass, with http_backoff's retries
    ("transfer", 429, "1"),   # the file's GET: http_stream_backoff retries 408/429
])
def test_each_attempt_makes_one_request_that_fails_and_our_loop_decides_the_wait(hub, tmp_path, kind, status,
                                                                                 retry_after):
    repo, sha = _repo(tmp_path, status=status, count=-1, kinds=[kind],
                      **({"retry_after": retry_after} if retry_after else {}))
    notes = []
    started = time.monotonic()
    with pytest.raises(CompressionError) as info:
        download_revision(repo, sha, tmp_path / "work" / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                          attempts=3, retry_seconds=2.4, note=notes.append, poll_seconds=0.1)
    faulted = [r for r in hub.requests() if r["repo"] == repo and r.get("fault")]
    assert [r["fault"] for r in faulted] == [status] * 3, faulted   # one per attempt, none retried underneath
    assert len(notes) == 2 and all(f"{status} " in n for n in notes), notes
    if retry_after:   # the first wait is the hub's 1 s, longer than the schedule's 0.8 s
        assert notes[0].endswith("retrying in 1 s, as the hub asked (Retry-After: 1)"), notes
    assert "after 3 attempts" in info.value.message and str(status) in info.value.message
    assert time.monotonic() - started < 40   # (a sanity bound; the request counts above are the proof)
    assert leftovers(tmp_path / "work") == []


def test_a_rate_limit_reset_is_honoured_now_that_huggingface_hub_does_not(hub, tmp_path):
    """A 429 that says when the window resets only in the hub's RateLimit header (no Retry-After):
    huggingface_hub waited for it; the worker's loop must now, and say which header it read."""
    repo, sha = _repo(tmp_path, status=429, count=1, kinds=["tree"], ratelimit_reset=2)
    notes = []
    folder = download_revision(repo, sha, tmp_path / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                               attempts=3, retry_seconds=3.0, note=notes.append, poll_seconds=0.1)
    assert (folder / "model.safetensors").read_bytes() == b"commit-a" * 10
    listings = [r for r in hub.requests() if r["repo"] == repo and r.get("kind") == "tree"]
    assert [r.get("fault") for r in listings] == [429, None]
    assert listings[1]["at"] - listings[0]["at"] >= 2.0, "the hub was asked again before its window reset"
    assert len(notes) == 1 and notes[0].endswith("retrying in 2 s, as the hub asked (RateLimit reset: 2)"), notes


def test_a_hub_that_refuses_connections_fails_each_attempt_at_once(tmp_path, monkeypatch):
    """Connection refused: huggingface_hub would retry the listing 5 times over 23 s per attempt."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)   # (the test session is offline)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    notes = []
    started = time.monotonic()
    with pytest.raises(CompressionError) as info:
        download_revision("acme/x", new_sha(), tmp_path / "dest", endpoint=closed, cache_dir=tmp_path / "hf-cache",
                          attempts=2, retry_seconds=0.5, note=notes.append, poll_seconds=0.1)
    elapsed = time.monotonic() - started
    assert "after 2 attempts" in info.value.message and "Connect" in info.value.message, info.value.message
    assert len(notes) == 1 and "retrying in 0.5 s" in notes[0], notes
    assert elapsed < 20, f"{elapsed:.0f} s: retried underneath the worker's loop"


XET_SETTINGS = """
import json, hf_xet
from huggingface_hub import constants
from huggingface_hub.utils._runtime import is_xet_available
config = hf_xet.XetConfig()
print(json.dumps({"attempts": config.get("client.retry_max_attempts"),
                  "base_delay": str(config.get("client.retry_base_delay")),
                  "max_duration": str(config.get("client.retry_max_duration")),
                  "xet_disabled": constants.HF_HUB_DISABLE_XET, "xet_used": is_xet_available()}))
"""


def test_the_download_child_leaves_the_retrying_of_xet_repos_to_our_loop(tmp_path, monkeypatch):
    """Whatever the operator set, the child that downloads gets xet off and hf_xet's retries at none."""
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "0")
    monkeypatch.setenv("HF_XET_CLIENT_RETRY_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("HF_XET_CLIENT_RETRY_BASE_DELAY", "10s")
    monkeypatch.setenv("HF_TOKEN", "hf_operator_token")
    environments = []
    real_popen = subprocess.Popen

    def recording_popen(args, **kw):
        environments.append(kw["env"])
        return real_popen(args, **kw)

    monkeypatch.setattr(hub_download.subprocess, "Popen", recording_popen)
    with socket.socket() as s:   # a hub that refuses connections: the child fails at once
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    outcome = hub_download._fetch_in_child("acme/x", new_sha(), tmp_path / "dest", closed, lambda: None, 0.1)
    assert outcome["ok"] is False and outcome["kind"] == "transient", outcome
    assert len(environments) == 1
    env = environments[0]
    assert env["HF_HUB_DISABLE_XET"] == "1" and env["HF_XET_CLIENT_RETRY_MAX_ATTEMPTS"] == "0"

    # ... and the installed huggingface_hub and hf_xet read it that way.
    seen = json.loads(subprocess.run([sys.executable, "-c", XET_SETTINGS], env=env, capture_output=True,
                                     text=True, check=True, timeout=60).stdout)
    assert seen == {"attempts": 0, "base_delay": "0:00:00", "max_duration": "0:00:00",
                    "xet_disabled": True, "xet_used": False}, seen
    assert env["HF_TOKEN"] == "hf_operator_token"   # the worker's environment otherwise
