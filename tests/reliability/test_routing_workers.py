"""Issue #16, routing with real processes: two Celery workers on different queues (`vtrans worker
--queues ...`), jobs routed by the API's settings. A job for the gpu queue with only a cpu worker
alive stays queued and says it waits for a gpu worker (API and /metrics); it runs on the gpu
worker once one starts, and each job is run by the worker of its queue."""
from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select

from .conftest import (BUDGET, FAST, auth, job_row, make_client, new_tenant, settings_env, tar_gz_of, wait_for,
                       wait_status, worker_cmd)

pytestmark = pytest.mark.slow


def _start_worker(start_proc, settings, queues: str, name: str):
    proc = start_proc(worker_cmd() + ["--queues", queues], settings_env(settings), name)
    wait_for(lambda: "ready." in proc.output() or proc.p.poll() is not None, 900, what=f"{name} ready")
    assert proc.p.poll() is None, proc.output()
    return proc


def _worker_tag(settings, queue: str) -> str:
    """The tag shared by a worker's main process (presence row) and its pool child (job.worker_id)."""
    from api.db import session_scope
    from api.models import Worker

    def find():
        with session_scope(settings.db_url) as s:
            rows = [w.id for w in s.scalars(select(Worker)) if w.queues == [queue]]
        return rows[0] if rows else None

    return wait_for(find, 60, what=f"presence row of the {queue} worker").rsplit(":", 1)[1]


def test_jobs_run_on_the_worker_of_their_queue(api_settings, tiny_model_dir, tiny_dataset_csv, start_proc, tmp_path):
    q = f"vtrans-route-{secrets.token_hex(4)}"
    gpu_tenant, gpu_headers = new_tenant(api_settings, "gpu")
    settings = api_settings.model_copy(update={
        "gpu_queue": f"{q}-gpu", "cpu_queue": f"{q}-cpu", "queue_overrides": {f"tenant:{gpu_tenant}": f"{q}-gpu"},
        "reaper_interval_seconds": 1, "worker_stale_seconds": 15, "data_dir": tmp_path / "data"})

    def submit(headers) -> str:
        from fastapi.testclient import TestClient

        from api.app import create_app

        with TestClient(create_app(settings), headers=headers) as c:   # the real enqueue (Celery)
            m = c.post("/v1/models", files={"file": ("m.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")})
            d = c.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
            assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
            r = c.post("/v1/jobs", json={"model": m.json()["id"], "dataset": d.json()["id"], "budget": BUDGET,
                                         "method": "fast", "options": FAST})
            assert r.status_code == 202, r.text
            return r.json()["id"]

    cpu_worker = _start_worker(start_proc, settings, f"{q}-cpu", "cpu-worker")
    cpu_tag = _worker_tag(settings, f"{q}-cpu")
    gpu_job = submit(gpu_headers)          # the operator override sends this tenant to the gpu queue
    cpu_job = submit(auth(settings))       # a tiny encoder: the cpu queue

    done = wait_status(settings, cpu_job, ("succeeded", "failed"), 900, log=cpu_worker.output)
    assert done.status == "succeeded", done.error
    assert done.queue == f"{q}-cpu" and done.worker_id.endswith(f":{cpu_tag}")

    # Only a cpu worker is alive: the gpu job waits, and says why.
    waiting = job_row(settings, gpu_job)
    assert waiting.status == "queued" and waiting.queue == f"{q}-gpu" and waiting.attempts == 0
    with make_client(settings, gpu_headers) as c:
        body = c.get(f"/v1/jobs/{gpu_job}").json()
        assert body["queue"] == f"{q}-gpu"
        assert "no live worker" in body["waiting_reason"] and f"{q}-gpu" in body["waiting_reason"]
        metrics = c.get("/metrics").text
    assert f'vtrans_queue_depth_per_queue{{queue="{q}-gpu"}} 1.0' in metrics
    assert f'vtrans_queue_live_workers{{queue="{q}-gpu"}} 0.0' in metrics
    assert f'vtrans_queue_live_workers{{queue="{q}-cpu"}} 1.0' in metrics

    gpu_worker = _start_worker(start_proc, settings, f"{q}-gpu", "gpu-worker")
    gpu_tag = _worker_tag(settings, f"{q}-gpu")
    done = wait_status(settings, gpu_job, ("succeeded", "failed"), 900, log=gpu_worker.output)
    assert done.status == "succeeded", done.error
    assert done.worker_id.endswith(f":{gpu_tag}") and gpu_tag != cpu_tag
    with make_client(settings, gpu_headers) as c:
        assert c.get(f"/v1/jobs/{gpu_job}").json()["waiting_reason"] is None
