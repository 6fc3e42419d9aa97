"""Connection use under load (issue #16, benchmarks/load_run.py): the pool is sized from settings,
SSE followers do not hold a connection between their polls, and more concurrent requests than
threads and connections all get served (a small pool makes each visible)."""
from __future__ import annotations

import asyncio
import secrets
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

    import anyio.to_thread
    from fastapi.testclient import TestClient

    settings = service_settings.model_copy(update={"db_pool_size": 3, "db_max_overflow": 1, "db_pool_timeout": 2.5,
                                                   "api_threads": 7})
    app = create_app(settings, enqueue=Recorder())
    pool = get_engine(settings.db_url).pool
    assert (pool.size(), pool._max_overflow, pool._timeout) == (3, 1, 2.5)

    async def threads() -> int:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    app.add_api_route("/test/threads", threads)
    with TestClient(app) as c:           # the server's thread pool is sized at startup
        assert c.get("/test/threads").json() == 7


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


def test_more_concurrent_requests_than_threads_and_connections_all_succeed(service_settings, start_proc):
    """120 requests at once (`def` routes and dependencies run on api_threads = 16 threads) on a pool
    of 2 connections with a 3 s timeout, authenticated by a key in the database. When the key's
    lookup kept its connection for the route, every thread ended up waiting in the pool for a
    connection held by a request that waited for a thread to run its route: the lookups timed
    out with 503s (issue #16's full-rate load run stalled this way for minutes)."""
    from api.auth import create_key, revoke_key

    ids = _queued_jobs(service_settings, 4)
    key = create_key(service_settings.db_url, "default")
    server = start_api(start_proc, service_settings, "api-tiny-pool", {
        "VTRANS_DB_POOL_SIZE": "2", "VTRANS_DB_MAX_OVERFLOW": "0", "VTRANS_DB_POOL_TIMEOUT": "3"})

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key.key}"},
                                     timeout=60, limits=limits) as client:
            paths = [f"/v1/jobs/{ids[i % len(ids)]}" if i % 2 else "/v1/jobs?status=queued&limit=20"
                     for i in range(120)]
            responses = await asyncio.gather(*(client.get(p) for p in paths))
            return [r.status_code for r in responses]

    try:
        codes = asyncio.run(burst())
        assert codes.count(200) == len(codes), (sorted(set(codes)), server.proc.output()[-3000:])
    finally:
        server.proc.stop()
        revoke_key(service_settings.db_url, key.id)
    assert "QueuePool limit" not in server.proc.output()


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


def test_only_connections_idle_in_the_pool_are_pinged_and_a_dead_one_is_replaced(pg_url, monkeypatch):
    """api/db.py pings a pooled connection only when it sat unused for PING_AFTER_IDLE_SECONDS
    (pool_pre_ping's SELECT 1 on every checkout was a round trip per request): one back from use
    a moment ago goes out unpinged; one idle longer is pinged, and when its backend is gone (a
    database restart, a proxy's idle cut) the pool replaces it before anyone sees an error."""
    import psycopg
    from sqlalchemy import text

    from api import db
    from .conftest import PG_ADMIN_DSN

    engine = db.get_engine(pg_url + "?application_name=vtrans_ping_test")   # an engine of its own
    pings = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.3)
    try:
        with engine.connect() as conn:
            first_backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as conn:               # back a moment ago: no ping
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == first_backend
        assert pings == []

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first_backend,))
        time.sleep(0.5)                              # idle past the threshold: pinged, found dead
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first_backend
        assert pings == [1]
    finally:
        engine.dispose()
