"""Fixtures for the live-progress tests (issue #4).

The database / Redis / worker fixtures are the service tests' own (imported, not copied), so
these tests run against the same real components: a Postgres database created for the run,
a Redis DB number of our own, and `vtrans api` / `vtrans worker` subprocesses that are always
killed. SSE needs a real HTTP server (the in-process TestClient buffers whole responses), so
the API runs as a subprocess here, which also makes every worker -> client path cross-process.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from service.conftest import (  # noqa: F401  (fixtures re-exported for tests/live)
    Server, auth, celery_worker, free_port, pg_url, redis_broker, service_settings, settings_env, start_api,
    start_proc, wait_for)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def redis_url(redis_broker) -> str:
    return redis_broker[0]


@pytest.fixture
def live_api(start_proc, service_settings, redis_url, monkeypatch) -> Server:
    """`vtrans api` on Postgres with Redis pub/sub. The safety DB poll is pushed out to 2 min,
    so an event that arrives within a test's read timeout came through the push path. This
    test process publishes to the same Redis when it records events."""
    monkeypatch.setenv("VTRANS_EVENT_BUS_URL", redis_url)
    return start_api(start_proc, service_settings, "api-redis",
                     {"VTRANS_EVENT_BUS_URL": redis_url, "VTRANS_EVENT_SAFETY_POLL_SECONDS": "120",
                      "VTRANS_EVENT_PING_SECONDS": "1"})


@pytest.fixture
def embedded_api(start_proc, tmp_path, monkeypatch) -> Server:
    """The embedded default: SQLite, no Redis, API in its own process. Nothing is pushed:
    events reach clients only because the API polls the database."""
    from api.db import migrate
    from api.settings import Settings

    monkeypatch.setenv("VTRANS_EVENT_BUS_URL", "none")
    settings = Settings(data_dir=tmp_path / "embedded", api_key=f"vt_live_{os.urandom(8).hex()}")
    settings.resolved_data_dir().mkdir(parents=True, exist_ok=True)
    migrate(settings.db_url)
    return start_api(start_proc, settings, "api-embedded", {"VTRANS_EVENT_BUS_URL": "none"})


# ------------------------------------------------------------------ SSE client for tests

class SSE:
    """A minimal SSE reader over httpx: yields {"event", "id", "data"} and ping markers."""

    def __init__(self, server: Server, job_id: str, last_event_id: str | None = None, read_timeout: float = 20.0,
                 deadline: float = 90.0):
        headers = {"Accept": "text/event-stream", **auth(server.settings)}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._client = httpx.Client(base_url=server.url, timeout=httpx.Timeout(10.0, read=read_timeout))
        self._cm = self._client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers)
        self.response = self._cm.__enter__()
        self._lines = self.response.iter_lines()
        self.pings = 0
        self.retry = None
        # Keep-alives reset httpx's read timeout, so a stream that never delivers what a test
        # waits for would block forever: every read checks an overall deadline as well.
        self.deadline = time.monotonic() + deadline

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        block: dict = {}
        data: list[str] = []
        for line in self._lines:
            if time.monotonic() > self.deadline:
                raise AssertionError("SSE stream: overall deadline passed before the expected events arrived")
            if line == "":
                if data or "id" in block:
                    block["data"] = json.loads("\n".join(data)) if data else None
                    block.setdefault("event", "message")
                    return block
                continue
            if line.startswith(":"):
                self.pings += line.strip() == ": ping"
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "retry":
                self.retry = int(value)
            elif field in ("event", "id"):
                block[field] = value
        raise StopIteration

    def take(self, n: int) -> list[dict]:
        return [next(self) for _ in range(n)]

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ jobs without compressions

class FakeRun:
    """Drives one job through the service's own state functions (api.jobstore): the same rows,
    seq numbers and publish() calls the worker makes, without running a compression."""

    def __init__(self, settings, method: str = "fast", worker: str = "test-worker"):
        from api import jobstore
        from api.db import session_scope
        from api.models import Job, new_id

        self.settings, self.worker, self.jobstore = settings, worker, jobstore
        self.job_id = new_id("job")
        with session_scope(settings.db_url) as s:
            s.add(Job(id=self.job_id, status="queued", model="org/tiny", dataset="tweet-sentiment",
                      request={"model": "org/tiny", "dataset": "tweet-sentiment", "method": method,
                               "budget": {"kind": "flops", "target": 0.5, "seq_len": 16}, "options": {}}))
            s.flush()
            ev = jobstore.add_event(s, self.job_id, "default", "status", status="queued", message="job created")
        jobstore.publish(self.job_id, [ev])
        self.claim = None
        self.step = 0

    def start(self):
        self.claim = self.jobstore.claim(self.settings.db_url, self.job_id, self.worker, 60, 3)
        assert self.claim is not None
        return self

    def progress(self, stage: str = "masks", fraction: float | None = None, **metrics):
        self.step += 1
        fraction = fraction if fraction is not None else min(0.95, 0.05 * self.step)
        owned, _ = self.jobstore.report_progress(self.settings.db_url, self.claim, stage, fraction,
                                                 {"step": self.step, "total_steps": 20, **metrics}, 60, True)
        assert owned

    def finish(self, status: str = "succeeded", metrics: dict | None = None):
        assert self.jobstore.finish(self.settings.db_url, self.claim, status, metrics=metrics or {"method": "fast"},
                                    error=None if status != "failed" else {"type": "Boom", "message": "boom"})

    def rows(self) -> list[dict]:
        from sqlalchemy import select

        from api.db import session_scope
        from api.models import JobEvent

        with session_scope(self.settings.db_url) as s:
            return [self.jobstore.event_to_dict(e) for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == self.job_id).order_by(JobEvent.seq))]


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def chromium_path() -> str | None:
    """Debian's chromium (VTRANS_CHROMIUM, when set, is the only candidate)."""
    explicit = os.environ.get("VTRANS_CHROMIUM")
    for candidate in ([explicit] if explicit else ["/usr/bin/chromium", "/usr/bin/chromium-browser"]):
        if Path(candidate).is_file():
            return candidate
    return None

