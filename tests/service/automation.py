"""Fixtures shared by the schedule and webhook tests (issue #14): settings with fast retries and
private webhook targets allowed (the receiver is on 127.0.0.1), a fresh tenant per test, and
real `vtrans scheduler` processes."""
from __future__ import annotations

import os
import secrets
import socket
import sys
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import Recorder, settings_env, wait_for
from .webhook_receiver import Receiver


@pytest.fixture
def hook_settings(service_settings):
    return service_settings.model_copy(update={
        "webhook_allow_private": True, "webhook_retry_delays": [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        "webhook_timeout_seconds": 2.0, "webhook_poll_seconds": 0.2, "scheduler_interval_seconds": 0.3,
        "max_active_jobs": 10_000})


class Tenant:
    def __init__(self, settings, enqueue=None):
        from fastapi.testclient import TestClient

        from api.app import create_app
        from api.auth import create_key

        self.name = f"t-{secrets.token_hex(4)}"
        self.key = create_key(settings.db_url, self.name).key
        self.enqueued = enqueue if enqueue is not None else Recorder()
        self.http = TestClient(create_app(settings, enqueue=self.enqueued),
                               headers={"Authorization": f"Bearer {self.key}"})
        self.http.__enter__()

    def close(self):
        # Leave no schedule behind to fire in the next test's scheduler passes.
        for sch in self.http.get("/v1/schedules").json().get("data", []):
            self.http.delete(f"/v1/schedules/{sch['id']}")
        self.http.__exit__(None, None, None)


@pytest.fixture
def tenants(hook_settings):
    made: list[Tenant] = []

    def make(settings=None, enqueue=None) -> Tenant:
        t = Tenant(settings or hook_settings, enqueue)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clock:
    """A clock file the scheduler processes read on every pass (`--clock-file`)."""

    def __init__(self, path: Path, start: datetime):
        self.path = path
        self.set(start)

    def set(self, when: datetime) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(when.isoformat(), encoding="utf-8")
        tmp.replace(self.path)  # atomic: a reader never sees half a time


@pytest.fixture
def start_scheduler(start_proc, hook_settings):
    def start(name: str = "scheduler", settings=None, clock: Clock | None = None, extra_env=None):
        args = [sys.executable, "-m", "api.cli", "scheduler"]
        if clock is not None:
            args += ["--clock-file", str(clock.path)]
        env = settings_env(settings or hook_settings)
        env.update(extra_env or {})
        proc = start_proc(args, env, name)
        # Up to minutes on a loaded 2-core machine: it imports the validation code before running
        # (VTRANS_TEST_START_SECONDS, as for the API processes, when a niced run shares the cores).
        wait_for(lambda: "scheduler: running" in proc.output() or proc.p.poll() is not None,
                 max(300.0, float(os.environ.get("VTRANS_TEST_START_SECONDS", "300"))), what=f"{name} ready")
        assert proc.p.poll() is None, proc.output()
        return proc
    return start


def queued_job(t: Tenant) -> str:
    r = t.http.post("/v1/jobs", json={"model": "prajjwal1/bert-tiny", "dataset": "tweet-sentiment",
                                      "budget": {"kind": "flops", "target": 0.6}})
    assert r.status_code == 202, r.text
    return r.json()["id"]
