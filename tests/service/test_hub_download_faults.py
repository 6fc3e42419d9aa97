"""The hub download's answers to a hub that says when to come back (429/503 with Retry-After) and
to a download child that hangs or dies (worker/hub_download.py, worker/hub_fetch.py), against the
fake hub in a thread of the test process (tests/service/hub_fixtures.py)."""
from __future__ import annotations

import math
import os
import secrets
import signal
import threading
import time
import types
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from vtrans_core.errors import CompressionCancelled, CompressionError
from worker.hub_download import download_revision, retry_after_seconds
from worker.hub_fetch import classify

from . import fake_hub
from .conftest import wait_for
from .hub_fixtures import children, commit_files, failed, hub, leftovers, new_sha, scripted  # noqa: F401 (hub: a fixture)

NOW = 1_700_000_000.0   # Tue, 14 Nov 2023 22:13:20 GMT


# ------------------------------------------------------------------ Retry-After

@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0),
    ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),       # IMF-fixdate
    ("Tuesday, 14-Nov-23 22:13:50 GMT", 30.0),     # obsolete RFC 850 form
    ("Tue Nov 14 22:13:50 2023", 30.0),            # obsolete asctime form (no zone: GMT)
    ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),        # already past: no wait asked
    ("9" * 40, math.inf),                          # longer than any budget, not an overflow
])
def test_retry_after_seconds_reads_delay_seconds_and_http_dates(value, seconds):
    assert retry_after_seconds(value, now=NOW) == seconds


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "-5", "1.5", "2 s", "²", "Tue, 14 Nov 2023 25:61:00 GMT"])
def test_retry_after_seconds_ignores_garbage(value):
    assert retry_after_seconds(value, now=NOW) is None


def test_the_child_reports_the_retry_after_of_a_429_or_503_only():
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import LocalEntryNotFoundError

    def failure(status, headers):
        response = types.SimpleNamespace(status_code=status, headers=headers, request=None)
        try:
            try:
                raise HfHubHTTPError(f"{status} Server Error", response=response)
            except HfHubHTTPError as err:   # as hf_hub_download wraps a failed HEAD
                raise LocalEntryNotFoundError("not on the hub nor in the cache") from err
        except LocalEntryNotFoundError as wrapped:
            return classify(wrapped)

    assert failure(429, {"retry-after": " 7 "}) | {"message": ""} == {
        "kind": "transient", "type": "HfHubHTTPError", "status": 429, "retry_after": "7", "message": ""}
    assert failure(503, {"Retry-After": "Tue, 14 Nov 2023 22:13:50 GMT"})["retry_after"] == \
        "Tue, 14 Nov 2023 22:13:50 GMT"
    assert failure(502, {"Retry-After": "7"})["retry_after"] is None   # no meaning on a 502
    assert failure(503, {})["retry_after"] is None
    assert classify(ValueError("disk full?"))["retry_after"] is None


def test_retry_after_lengthens_a_wait_within_the_budget_and_fails_when_asked_for_more_than_is_left(
        monkeypatch, tmp_path):
    """4 attempts over 7 s: 1, 2, 4. A Retry-After of 3 makes the first wait 3 (4 s left), the
    second is the schedule's 2 (2 s left), then a Retry-After of 5 is more than is left: fail now."""
    waits = scripted(monkeypatch, [failed(503, "3"), failed(503), failed(429, "5")])
    notes = []
    with pytest.raises(CompressionError) as info:
        download_revision("acme/x", new_sha(), tmp_path / "dest", endpoint="http://hub.invalid", attempts=4,
                          retry_seconds=7, note=notes.append)
    assert waits == [3, 2]
    assert notes[0].endswith("retrying in 3 s, as the hub asked (Retry-After: 3)")
    assert notes[1].endswith("retrying in 2 s")
    message = info.value.message
    assert info.value.field == "model" and "(HfHubHTTPError: 429 Server Error)" in message
    assert "the hub asked to wait 5 s before retrying (Retry-After), more than the 2 s left" in message
    assert "VTRANS_HUB_RETRY_SECONDS=7" in message and "cache has no copy" in message
    assert not (tmp_path / "dest").exists()


def test_the_waits_never_add_up_past_the_budget_after_a_retry_after(monkeypatch, tmp_path):
    """3 attempts over 3 s: 1, 2. A Retry-After of 2 uses 2 of the 3 s: the next wait is the 1 s left."""
    waits = scripted(monkeypatch, [failed(503, "2"), failed(503), failed(503)])
    with pytest.raises(CompressionError) as info:
        download_revision("acme/x", new_sha(), tmp_path / "dest", endpoint="http://hub.invalid", attempts=3,
                          retry_seconds=3)
    assert waits == [2, 1]
    assert "still failing after 3 attempts" in info.value.message


def _gap_after_the_fault(requests: list[dict], repo: str) -> tuple[dict, dict]:
    """The faulted transfer and the next request of the repo: the retry's first (the listing of a
    new attempt, or the transfer again when huggingface_hub retried it itself)."""
    mine = [r for r in requests if r["repo"] == repo]
    at = next(i for i, r in enumerate(mine) if r.get("fault"))
    return mine[at], mine[at + 1]


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_of_2_s_is_waited_out_then_the_download_succeeds(hub, tmp_path, status):
    """The schedule alone would retry after 0.4 s. Both reach the worker's loop (huggingface_hub
    would have retried the 429 itself: hub_fetch.use_one_retry_layer stops it), which waits as asked."""
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    fake_hub._add_commit(repo, sha, str(commit_files(tmp_path / "a", "commit-a")))
    fake_hub.FAULTS[repo] = {"status": status, "count": 1, "retry_after": "2"}
    notes = []

    folder = download_revision(repo, sha, tmp_path / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                               attempts=4, retry_seconds=2.8, note=notes.append, poll_seconds=0.1)

    assert (folder / "model.safetensors").read_bytes() == b"commit-a" * 10
    faulted, retry = _gap_after_the_fault(hub.requests(), repo)
    assert faulted["fault"] == status
    assert retry["at"] - faulted["at"] >= 2.0, "the hub was asked again before its Retry-After"
    assert len(notes) == 1 and notes[0].endswith("retrying in 2 s, as the hub asked (Retry-After: 2)")
    assert f"{status} " in notes[0]


def test_a_retry_after_http_date_is_waited_for(hub, tmp_path):
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    fake_hub._add_commit(repo, sha, str(commit_files(tmp_path / "a", "commit-a")))
    # "Fri, 04 Dec 2026 03:55:43 GMT", 12 s ahead: a busy machine takes seconds between the answer
    # and the worker's decision (the child's exit, the cache lookup), and a date past by then asks nothing.
    fake_hub.FAULTS[repo] = {"status": 503, "count": 1, "retry_after_in": 12}
    notes = []

    download_revision(repo, sha, tmp_path / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                      attempts=5, retry_seconds=20, note=notes.append, poll_seconds=0.1)   # 1.3 s first

    faulted, retry = _gap_after_the_fault(hub.requests(), repo)
    until = parsedate_to_datetime(faulted["retry_after"]).timestamp()
    assert until > faulted["at"] + 10 and retry["at"] >= until, "the hub was asked again before the date it gave"
    assert len(notes) == 1 and "as the hub asked (Retry-After: " in notes[0] and "GMT)" in notes[0]


def test_a_retry_after_beyond_the_budget_fails_at_once_saying_so(hub, tmp_path):
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    fake_hub._add_commit(repo, sha, str(commit_files(tmp_path / "a", "commit-a")))
    fake_hub.FAULTS[repo] = {"status": 503, "count": -1, "retry_after": "600"}
    notes = []

    with pytest.raises(CompressionError) as info:
        download_revision(repo, sha, tmp_path / "work" / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                          attempts=5, retry_seconds=60, note=notes.append, poll_seconds=0.1)

    faulted = [r for r in hub.requests() if r["repo"] == repo and r.get("fault")]
    assert len(faulted) == 1 and notes == []                  # no wait, no second attempt
    assert time.time() - faulted[0]["at"] < 30                # not the 600 s, nor the 60 s budget
    message = info.value.message
    assert f"{repo!r} at revision {sha}" in message and "503" in message
    assert "the hub asked to wait 600 s before retrying (Retry-After), more than the 60 s left" in message
    assert "VTRANS_HUB_RETRY_SECONDS=60" in message
    assert leftovers(tmp_path / "work") == []


# ------------------------------------------------------------------ the child process

def _fetch_child() -> int:
    """The pid of the one download child (python -m worker.hub_fetch) of this test process."""
    pids = [pid for pid in children() if b"worker.hub_fetch" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(pids) == 1, pids
    return pids[0]


def _reaped(pid: int) -> bool:
    """Dead and waited for: no longer our child (a zombie still would be) and gone from /proc."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not Path(f"/proc/{pid}").exists()
    return False


def test_a_child_stuck_in_a_blocking_read_is_killed_and_reaped_on_cancel(hub, tmp_path):
    """The hub reads the listing request and never answers: the child sits in a socket read that
    no flag can interrupt. The cancel must still end it within seconds, leaving no process (the
    hub sees the connection close) and no file."""
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    fake_hub._add_commit(repo, sha, str(commit_files(tmp_path / "a", "commit-a")))
    fake_hub.FAULTS[repo] = {"hang": True}
    cancelled, at, pid = threading.Event(), [], []

    def cancel_once_stuck():
        wait_for(lambda: any(r["repo"] == repo and r.get("hang") for r in hub.requests()), 120, 0.1,
                 what="the child's request")
        pid.append(_fetch_child())
        time.sleep(1.0)
        at.append(time.monotonic())
        cancelled.set()

    def check():
        if cancelled.is_set():
            raise CompressionCancelled("cancelled")

    threading.Thread(target=cancel_once_stuck, daemon=True).start()
    work = tmp_path / "work"
    with pytest.raises(CompressionCancelled):
        download_revision(repo, sha, work / "hub-model", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                          attempts=3, retry_seconds=10, check=check, poll_seconds=0.2)
    assert time.monotonic() - at[0] < 5, "the cancel was not noticed while the child hung"
    assert _reaped(pid[0]) and children() == []
    stuck = next(r for r in hub.requests() if r["repo"] == repo and r.get("hang"))
    wait_for(lambda: "closed" in stuck, 5, 0.1, what="the hub to see the child's connection close")
    assert leftovers(work) == []


def test_a_child_killed_by_sigkill_mid_download_fails_the_job_naming_the_signal_without_retrying(hub, tmp_path):
    """As documented in worker/hub_download.py: a child that dies without an outcome is an error,
    not a hub outage; the job fails at once and the partial download is deleted."""
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    files = commit_files(tmp_path / "a", "commit-a")
    (files / "model.safetensors").write_bytes(b"\0" * (4 * 1024 * 1024))   # ~100 s at 40 KB/s
    fake_hub._add_commit(repo, sha, str(files))
    fake_hub.FAULTS[repo] = {"bytes_per_second": 40_000}
    work, killed, partial = tmp_path / "work", [], []

    def kill_once_the_weights_flow():
        wait_for(lambda: any(r["repo"] == repo and r.get("file") == "model.safetensors" and r["method"] == "GET"
                             for r in hub.requests()), 120, 0.1, what="the weights transfer")
        time.sleep(1.0)   # some bytes are on disk by now
        pid = _fetch_child()
        partial.extend(leftovers(work))
        os.kill(pid, signal.SIGKILL)
        killed.append((pid, time.monotonic()))

    threading.Thread(target=kill_once_the_weights_flow, daemon=True).start()
    notes = []
    with pytest.raises(CompressionError) as info:
        download_revision(repo, sha, work / "hub-model", endpoint=hub.url, cache_dir=tmp_path / "hf-cache",
                          attempts=3, retry_seconds=10, note=notes.append, poll_seconds=0.2)
    pid, at = killed[0]
    assert time.monotonic() - at < 10, "the child's death was not noticed"   # (includes the HF cache lookup)
    message = info.value.message
    assert info.value.field == "model" and f"{repo!r} at revision {sha}" in message
    assert "DownloadProcessDied: the download process was killed by SIGKILL (signal 9)" in message
    assert notes == [] and len([r for r in hub.requests() if r["repo"] == repo and r.get("kind") == "tree"]) == 1
    assert _reaped(pid) and children() == []
    assert any(p.startswith("hub-model/") for p in partial)   # there was a partial download ...
    assert leftovers(work) == []                               # ... and it is gone
