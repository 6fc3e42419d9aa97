"""Connection use under load (issue #16, benchmarks/load_run.py): the pool is sized from settings,
and SSE followers do not hold a connection between their polls (a small pool makes it visible)."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from .conftest import Recorder, auth, start_api, wait_for


def _queued_jobs(settings, n: int) -> list[str]:
    from api.db import session_scope
    from api.models import Job, new_id

    ids = [new_id("job") for _ in range(n)]
    with session_scope(settings.db_url) as s:
        for job_id in ids:
            s.add(Job(id=job_id, status="queued", model="org/tiny", dataset="tweet-sentiment",
                      request={"model": "org/tiny", "dataset": "tweet-sentiment", "method": "fast",
                               "budget": {"kind": "flops", "target": 0.5, "seq_len": 16}, "options": {}}))
    return ids


@pytest.fixture
def restore_pool():
    yield
    from api.db import configure_pool
    from api.settings import Settings

    d = Settings.model_fields
    configure_pool(d["db_pool_size"].default, d["db_max_overflow"].default, d["db_pool_timeout"].default)


def test_app_applies_pool_settings(service_settings, restore_pool):
    from api.app import create_app
    from api.db import get_engine

    settings = service_settings.model_copy(update={"db_pool_size": 3, "db_max_overflow": 1, "db_pool_timeout": 2.5})
    create_app(settings, enqueue=Recorder())
    pool = get_engine(settings.db_url).pool
    assert (pool.size(), pool._max_overflow, pool._timeout) == (3, 1, 2.5)


def test_sse_followers_hold_no_connection_between_polls(service_settings, start_proc):
    """A real API process with a pool of 2 connections (no overflow, 2 s timeout) and 8 SSE
    followers polling the database every 0.2 s: if a follower kept its connection between polls,
    the pool would be gone and the followers' polls and a plain GET would fail."""
    ids = _queued_jobs(service_settings, 8)
    server = start_api(start_proc, service_settings, "api-small-pool", {
        "VTRANS_DB_POOL_SIZE": "2", "VTRANS_DB_MAX_OVERFLOW": "0", "VTRANS_DB_POOL_TIMEOUT": "2",
        "VTRANS_EVENT_SAFETY_POLL_SECONDS": "0.2", "VTRANS_EVENT_POLL_SECONDS": "0.2", "VTRANS_EVENT_PING_SECONDS": "0.5"})
    proc, url = server.proc, server.url
    pings: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def follow(job_id: str) -> None:
        try:
            with httpx.Client(base_url=url, headers=auth(service_settings), timeout=20) as client:
                with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
                    if r.status_code != 200:
                        failures.append(f"{job_id}: {r.status_code}")
                        return
                    for line in r.iter_lines():
                        if line == ": ping":
                            pings[job_id] = pings.get(job_id, 0) + 1
                        if stop.is_set():
                            return
                    failures.append(f"{job_id}: stream ended")
        except Exception as exc:
            failures.append(f"{job_id}: {exc!r}")

    followers = [threading.Thread(target=follow, args=(i,), daemon=True) for i in ids]
    for t in followers:
        t.start()
    try:
        # Every follower is connected and has polled the database several times.
        wait_for(lambda: len(pings) == len(ids) and min(pings.values()) >= 3 or failures, 60, 0.2,
                 what="all followers pinged")
        with httpx.Client(base_url=url, headers=auth(service_settings), timeout=20) as client:
            for job_id in ids[:4]:
                t0 = time.monotonic()
                r = client.get(f"/v1/jobs/{job_id}")
                assert r.status_code == 200, r.text
                assert time.monotonic() - t0 < 2.0, "waited on the pool"
        assert failures == [], (failures, proc.output()[-3000:])
    finally:
        stop.set()
        proc.stop()
    assert "QueuePool limit" not in proc.output()


def test_sse_stream_closes_cleanly_when_the_database_fails_mid_stream(service_settings, monkeypatch):
    """A poll that cannot get a connection (pool timeout, outage) after the 200 was sent ends the
    stream, for the client to reconnect with Last-Event-ID, instead of an ASGI error (raised by
    the TestClient) and a torn chunked response."""
    from fastapi.testclient import TestClient
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from api import event_bus
    from api.app import create_app
    from api.routes import events

    job_id = _queued_jobs(service_settings, 1)[0]
    calls = {"n": 0}
    real = events._events_since

    def failing_after_first(*args):
        calls["n"] += 1
        if calls["n"] > 1:
            raise PoolTimeout("QueuePool limit of size 2 overflow 0 reached")
        return real(*args)

    monkeypatch.setattr(events, "_events_since", failing_after_first)
    monkeypatch.setattr(event_bus, "SAFETY_POLL_SECONDS", 0.1)
    monkeypatch.setattr(event_bus, "POLL_SECONDS", 0.1)
    with TestClient(create_app(service_settings, enqueue=Recorder()), headers=auth(service_settings)) as c:
        r = c.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
    assert r.status_code == 200
    assert r.text.startswith("retry: ") and "event: end" not in r.text
    assert calls["n"] == 2
