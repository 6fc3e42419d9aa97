"""api.client.Client against the real service (`vtrans api` subprocess on Postgres + Redis):
events resumed across dropped connections, wait with a timeout, resumable checksum-verified
downloads, typed errors, and 429 answers retried after Retry-After. Jobs are driven through the
service's own state functions (FakeRun), so no compression has to run."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import httpx
import pytest

from api import client as vc
from live.conftest import FakeRun

from .conftest import LIMITED_TENANT

pytestmark = pytest.mark.slow


def _client(url: str, settings, **kw) -> vc.Client:
    return vc.Client(url, settings.api_key, **kw)


def _drive(run: FakeRun, steps: int, status: str = "succeeded", pause: float = 0.3, **finish) -> threading.Thread:
    def go():
        time.sleep(0.5)
        run.start()
        for _ in range(steps):
            run.progress("masks")
            time.sleep(pause)
        run.finish(status, **finish)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_events_resume_after_dropped_connections(live_api, proxy):
    run = FakeRun(live_api.settings)
    proxy.cut("/events", after_bytes=600, times=2)  # headers + a couple of events, then the line goes dead
    driver = _drive(run, steps=8)
    with _client(proxy.url, live_api.settings) as vt:
        events = list(vt.events(run.job_id))
    driver.join(10)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs        # every event exactly once, in order
    assert len(seqs) == len(run.rows()) and events[-1].status == "succeeded"
    assert proxy.cut_done == 2
    assert sum(b"/events" in r for r in proxy.requests) >= 3   # two reconnects


def test_wait_survives_a_dropped_stream_and_returns_the_final_job(live_api, proxy):
    run = FakeRun(live_api.settings)
    proxy.cut("/events", after_bytes=500, times=1)
    driver = _drive(run, steps=5, status="failed")
    with _client(proxy.url, live_api.settings) as vt:
        job = vt.wait(run.job_id, timeout=60)
    driver.join(10)
    assert job.status == "failed" and job.error.message == "boom" and proxy.cut_done == 1


def test_wait_times_out_while_the_job_keeps_running(live_api):
    run = FakeRun(live_api.settings).start()
    run.progress("masks")
    started = time.monotonic()
    with _client(live_api.url, live_api.settings) as vt, pytest.raises(vc.WaitTimeout) as exc:
        vt.wait(run.job_id, timeout=2)
    assert 1.5 < time.monotonic() - started < 15
    assert exc.value.job.status == "running"


def _succeeded_with_files(settings, tmp_path, size: int) -> tuple[FakeRun, bytes]:
    from api import jobstore
    from api.artifacts import ArtifactStore

    run = FakeRun(settings).start()
    files = tmp_path / "result"
    files.mkdir()
    payload = os.urandom(size)
    (files / "model.tar.gz").write_bytes(payload)
    (files / "metrics.json").write_text(json.dumps({"flops_fraction": 0.5}))
    stored = ArtifactStore(settings.artifacts).put_dir_checked(files, f"jobs/{run.job_id}/attempt-1")
    rows = [{"name": rel, "storage_key": f"jobs/{run.job_id}/attempt-1/{rel}", "size_bytes": size_, "sha256": sha,
             "media_type": "application/gzip" if rel.endswith(".gz") else "application/json"}
            for rel, size_, sha in stored]
    assert jobstore.finish(settings.db_url, run.claim, "succeeded", metrics={"method": "fast"}, artifacts=rows)
    return run, payload


def test_download_resumes_a_cut_transfer_and_verifies_sha256(live_api, proxy, tmp_path):
    run, payload = _succeeded_with_files(live_api.settings, tmp_path, 3 * 1024 * 1024)
    proxy.cut("/artifacts/model.tar.gz", after_bytes=1536 * 1024, times=1)
    ranges: list[str | None] = []
    with _client(proxy.url, live_api.settings) as vt:
        vt.http.event_hooks["request"].append(lambda r: ranges.append(r.headers.get("range"))
                                              if r.url.path.endswith("model.tar.gz") else None)
        listed = {a.name: a for a in vt.artifacts(run.job_id)}
        assert listed["model.tar.gz"].sha256 == hashlib.sha256(payload).hexdigest()
        assert listed["model.tar.gz"].size == len(payload)
        paths = vt.download(run.job_id, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["metrics.json", "model.tar.gz"]
    assert (tmp_path / "out" / "model.tar.gz").read_bytes() == payload
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")  # resumed, not restarted
    assert not list((tmp_path / "out").glob("*.part"))


def test_download_with_a_corrupt_partial_file_is_refused_and_removed(live_api, tmp_path):
    run, payload = _succeeded_with_files(live_api.settings, tmp_path, 256 * 1024)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.tar.gz.part").write_bytes(b"\0" * 1000)  # a leftover that is not the file's start
    with _client(live_api.url, live_api.settings) as vt:
        with pytest.raises(vc.ChecksumMismatch):
            vt.download(run.job_id, out, ["model.tar.gz"])
        assert not (out / "model.tar.gz").exists() and not (out / "model.tar.gz.part").exists()
        assert vt.download(run.job_id, out, ["model.tar.gz"])[0].read_bytes() == payload  # a clean retry works


def test_errors_are_typed_and_carry_the_problem_fields(live_api):
    with _client(live_api.url, live_api.settings) as vt:
        with pytest.raises(vc.NotFound) as nf:
            vt.get("job_00000000000000000000")
        assert nf.value.status == 404 and nf.value.type == "urn:vtrans:problem:not-found"
        assert nf.value.instance == "/v1/jobs/job_00000000000000000000"
        with pytest.raises(vc.BadRequest) as bad:
            vt.submit("org/tiny", "tweet-sentiment", "flops:1.5", "fast")
        assert bad.value.status == 422 and bad.value.errors[0]["field"] == "budget.target"
        run = FakeRun(live_api.settings).start()
        run.finish("succeeded")
        with pytest.raises(vc.Conflict):
            vt.cancel(run.job_id)
        with pytest.raises(ValueError):
            vt.submit("org/tiny", "tweet-sentiment", "half", "fast")
    with vc.Client(live_api.url, "vt_wrong_key") as wrong, pytest.raises(vc.Unauthorized):
        wrong.get(run.job_id)


def test_submit_is_retried_after_429_and_idempotent(live_api):
    from api.auth import create_key

    key = create_key(live_api.settings.db_url, LIMITED_TENANT).key  # at most one active job
    statuses: list[int] = []
    got_429 = threading.Event()

    def record(resp: httpx.Response) -> None:
        if resp.request.method == "POST":
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                got_429.set()

    with vc.Client(live_api.url, key, max_retry_wait=1.0, retries=5) as vt:
        first = vt.submit("org/tiny", "tweet-sentiment", "flops:0.5", "fast")
        vt.http.event_hooks["response"].append(record)
        # Free the slot once the service has said 429: the retry after Retry-After then gets in.
        freer = threading.Thread(target=lambda: got_429.wait(30) and vt.cancel(first.id), daemon=True)
        freer.start()
        second = vt.submit("org/tiny", "tweet-sentiment", "flops:0.5", "fast", idempotency_key="ci-run-42")
        freer.join(10)
        assert statuses[0] == 429 and statuses[-1] == 202 and second.status == "queued"
        again = vt.submit("org/tiny", "tweet-sentiment", "flops:0.5", "fast", idempotency_key="ci-run-42")
        assert again.id == second.id
        assert [j.id for j in vt.list(page_size=1)] == [second.id, first.id]  # two pages, newest first
        vt.cancel(second.id)
