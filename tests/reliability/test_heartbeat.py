"""Issue #16: the lease is renewed by a heartbeat thread, not only by progress reports. A model
load that reports nothing for several leases (a big decoder, a loaded CPU) must not get a healthy
worker presumed dead: the reaper runs all the time here and must never requeue the job.

The load is made slow for real: vtrans_core's own loader sleeps before loading, inside compress()."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from api import jobstore
from api.db import session_scope
from api.models import Job, JobEvent

from .conftest import BUDGET, FAST, make_client

SLOW_LOAD_SECONDS = 7.0   # more than two 2.5 s leases without a single progress report


@pytest.fixture
def slow_load(monkeypatch):
    import vtrans_core.entry as entry

    real = entry.load_classifier
    calls = []

    def sleepy_loader(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(SLOW_LOAD_SECONDS)
        return real(*args, **kwargs)

    import vtrans_core.pipeline as pipeline

    # the pipeline holds its own reference (imported at module load): patch it where it is called
    monkeypatch.setattr(entry, "load_classifier", sleepy_loader)
    monkeypatch.setattr(pipeline, "load_classifier", sleepy_loader)
    return calls


def _queued_job(settings, inputs) -> str:
    model_id, ds_id = inputs
    with make_client(settings) as c:
        r = c.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET, "method": "fast",
                                     "options": FAST})
        assert r.status_code == 202, r.text
        return r.json()["id"]


def _run_with_reaper(settings, job_id: str) -> tuple[str, list[str]]:
    """run_job in this thread while another thread reaps expired leases twice a second."""
    from worker.runner import run_job

    reaped: list[str] = []
    stop = threading.Event()

    def reaper():
        while not stop.wait(0.5):
            reaped.extend(jobstore.reap(settings.db_url, settings.max_attempts))

    t = threading.Thread(target=reaper, daemon=True)
    t.start()
    try:
        outcome = run_job(settings, job_id, "worker-heartbeat-test")
    finally:
        stop.set()
        t.join(timeout=10)
    return outcome, reaped


def _messages(settings, job_id: str) -> list[str]:
    with session_scope(settings.db_url) as s:
        return [e.message or "" for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]


def test_a_slow_model_load_keeps_its_lease(api_settings, inputs, slow_load, tmp_path):
    settings = api_settings.model_copy(update={"lease_seconds": 2.5, "max_attempts": 1,
                                               "data_dir": tmp_path / "data"})
    assert settings.heartbeat_interval < settings.lease_seconds / 2
    job_id = _queued_job(settings, inputs)
    outcome, reaped = _run_with_reaper(settings, job_id)
    assert slow_load, "the slow loader was not used"
    assert outcome == "succeeded" and reaped == []
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded" and job.attempts == 1 and job.error is None
    assert not any("lost its worker" in m or "lease expired" in m for m in _messages(settings, job_id))


def test_without_the_heartbeat_the_same_load_loses_the_job(api_settings, inputs, slow_load, tmp_path):
    """The control: the scenario above really outlasts the lease when only progress renews it."""
    settings = api_settings.model_copy(update={"lease_seconds": 2.5, "max_attempts": 1, "heartbeat_seconds": -1,
                                               "data_dir": tmp_path / "data"})
    job_id = _queued_job(settings, inputs)
    outcome, reaped = _run_with_reaper(settings, job_id)
    assert outcome == "lost"
    with session_scope(settings.db_url) as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.error["type"] == "WorkerLost"


def test_the_heartbeat_notices_a_lost_lease(api_settings, inputs, tmp_path):
    """A worker that was presumed dead (e.g. paused longer than its lease) learns it from the next beat
    and stops at its next progress point instead of computing on for nothing."""
    from worker.heartbeat import Heartbeat
    from worker.runner import LeaseLost, Progress

    settings = api_settings.model_copy(update={"lease_seconds": 30, "heartbeat_seconds": 0.2,
                                               "data_dir": tmp_path / "data"})
    job_id = _queued_job(settings, inputs)
    old = jobstore.claim(settings.db_url, job_id, "worker-a", -1, 3)    # its lease already ran out...
    assert jobstore.claim(settings.db_url, job_id, "worker-b", 30, 3)    # ...and another attempt took it
    hb = Heartbeat(settings, old).start()
    try:
        assert hb.lost.wait(5)
        with pytest.raises(LeaseLost):
            Progress(settings, old, hb)("masks", 0.1, {})
    finally:
        hb.stop()
    with session_scope(settings.db_url) as s:
        assert s.get(Job, job_id).worker_id == "worker-b"
