"""Issue #5, crash safety: restart Postgres, and restart Redis, in the middle of a real run.
Both are PRIVATE servers started by the test (never the machine's shared ones). During the
outage API calls answer 503 + Retry-After (problem+json), quickly; afterwards no job is lost."""
from __future__ import annotations

import secrets
import time

import pytest

from .conftest import (BUDGET, SLOW, assert_problem, auth, job_row, running_with_progress, start_worker,
                       tar_gz_of, wait_status)

pytestmark = pytest.mark.slow
DONE = ("succeeded", "failed", "cancelled")


@pytest.fixture
def stack(private_pg, private_redis, service_settings, tmp_path, tiny_model_dir, tiny_dataset_csv):
    """Settings on the private servers, migrated, with a model and dataset uploaded."""
    from api.db import migrate
    from api.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", database_url=private_pg.url, broker_url=private_redis.url,
                        queue=f"vtrans-outage-{secrets.token_hex(4)}", artifact_url=f"file://{tmp_path / 'artifacts'}",
                        api_key=service_settings.api_key, lease_seconds=25, reaper_interval_seconds=1,
                        cancel_check_seconds=1, max_attempts=3, resend_queued_after_seconds=5,
                        retry_after_seconds=7, max_active_jobs=100, db_connect_timeout=3)
    migrate(settings.db_url)
    with _client(settings) as c:
        m = c.post("/v1/models", files={"file": ("m.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")})
        d = c.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
        assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
    yield settings, {"model": m.json()["id"], "dataset": d.json()["id"], "budget": BUDGET, "method": "fast",
                     "options": SLOW}
    from api.db import get_engine

    get_engine(settings.db_url).dispose()


def _client(settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    return TestClient(create_app(settings), headers=auth(settings))  # the real Celery enqueue


def _unavailable(r, started: float) -> None:
    assert_problem(r, 503)
    assert int(r.headers["retry-after"]) == 7
    assert time.monotonic() - started < 30, "an outage must be answered quickly, not hang"


def test_postgres_restart_during_a_run(stack, private_pg, start_proc):
    settings, body = stack
    worker = start_worker(start_proc, settings)
    with _client(settings) as c:
        job_id = c.post("/v1/jobs", json=body).json()["id"]
        running_with_progress(settings, job_id)
        private_pg.stop()
        for method, path, kw in (("GET", f"/v1/jobs/{job_id}", {}), ("GET", "/v1/jobs", {}),
                                 ("POST", "/v1/jobs", {"json": body}), ("GET", "/readyz", {})):
            t0 = time.monotonic()
            _unavailable(c.request(method, path, **kw), t0)
        assert c.get("/healthz").status_code == 200   # the process itself is fine
        time.sleep(3)                                  # the worker keeps computing meanwhile
        private_pg.start()
        job = wait_status(settings, job_id, DONE, 300, log=worker.output)
        assert job.status == "succeeded", (job.error, worker.output()[-3000:])
        # The same attempt survived: progress reports were skipped, not fatal.
        assert job.attempts == 1
        assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"  # the API recovered too
        assert c.get("/readyz").status_code == 200


def test_redis_restart_during_a_run(stack, private_redis, start_proc):
    settings, body = stack
    worker = start_worker(start_proc, settings)
    with _client(settings) as c:
        running_id = c.post("/v1/jobs", json=body).json()["id"]
        waiting_id = c.post("/v1/jobs", json=body).json()["id"]  # its message sits in Redis
        running_with_progress(settings, running_id)
        assert job_row(settings, waiting_id).status == "queued"
        private_redis.stop()   # no persistence: the queue's contents are gone for good
        t0 = time.monotonic()
        r = c.post("/v1/jobs", json=body)
        _unavailable(r, t0)
        t0 = time.monotonic()
        _unavailable(c.get("/readyz"), t0)
        assert c.get(f"/v1/jobs/{running_id}").status_code == 200  # reads need only the database
        time.sleep(3)
        private_redis.start()
        for job_id in (running_id, waiting_id):
            job = wait_status(settings, job_id, DONE, 400, log=worker.output)
            assert job.status == "succeeded", (job_id, job.error, worker.output()[-3000:])
        # Nothing was silently dropped: every job ever created is either done or was refused
        # loudly (the 503 above marked its row failed with the reason).
        jobs = c.get("/v1/jobs?limit=100").json()["data"]
        assert {j["status"] for j in jobs} <= {"succeeded", "failed"}
        failed = [j for j in jobs if j["status"] == "failed"]
        assert len(failed) == 1 and failed[0]["error"]["type"] == "BrokerUnavailable"
