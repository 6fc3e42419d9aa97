"""The job path with real parts: API on Postgres, `vtrans worker` (Celery, prefork) on Redis, a
real tiny compression, artifacts downloaded over HTTP and loaded with transformers."""
from __future__ import annotations

import json

import pytest
import torch
from sqlalchemy import select

from api.db import session_scope
from api.models import Artifact, JobEvent

from .conftest import auth, stored_files
from .jobpath import BUDGET, FAST_OPTIONS, download_and_load_model, upload_inputs, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture
def http(service_settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    # The real enqueue: Celery on Redis.
    with TestClient(create_app(service_settings), headers=auth(service_settings)) as c:
        yield c


def test_job_runs_on_celery_worker_and_model_loads(http, celery_worker, service_settings, tiny_model_dir,
                                                   tiny_dataset_csv, tmp_path):
    model_id, ds_id = upload_inputs(http, tiny_model_dir, tiny_dataset_csv)
    r = http.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET, "method": "vtrans",
                                    "options": FAST_OPTIONS})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_job(http, job_id, 600, log=celery_worker.output)
    assert job["status"] == "succeeded", (job, celery_worker.output()[-4000:])
    assert job["progress"] == 1.0 and job["attempts"] == 1 and job["metrics"]["pruned"]

    names = {a["name"] for a in job["artifacts"]}
    assert {"model.tar.gz", "metrics.json", "plan.json", "README.md", "model/config.json"} <= names
    assert any(n.startswith("model/") and n.endswith(".safetensors") for n in names)
    assert names == {a["name"] for a in http.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}

    model, tokenizer = download_and_load_model(http, job_id, tmp_path)
    dense_params = sum(p.numel() for p in _dense(tiny_model_dir).parameters())
    pruned_params = sum(p.numel() for p in model.parameters())
    assert pruned_params < dense_params
    with torch.no_grad():
        logits = model(**tokenizer(["what a great day"], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()

    config = http.get(f"/v1/jobs/{job_id}/artifacts/model/config.json")
    assert config.status_code == 200 and json.loads(config.content) == json.loads((tmp_path / "model/config.json").read_text())
    metrics = http.get(f"/v1/jobs/{job_id}/artifacts/metrics.json").json()
    assert metrics["flops_fraction"] <= BUDGET["target"] + 0.01
    card = http.get(f"/v1/jobs/{job_id}/artifacts/README.md").text
    assert model_id in card and "m.tar.gz" in card and "Budget" in card and "dense" in card and "latency" in card
    assert f"| accuracy (%) | {metrics['dense']['accuracy']:.2f} | {metrics['pruned']['accuracy']:.2f} |" in card
    plan = http.get(f"/v1/jobs/{job_id}/artifacts/plan.json").json()
    assert "heads" in plan or "hidden" in plan

    # Progress went through the stages in order and was recorded as events.
    with session_scope(service_settings.db_url) as s:
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()
    fractions = [e.fraction for e in events if e.kind == "progress"]
    assert len(fractions) >= 3 and fractions == sorted(fractions)
    assert [e.status for e in events if e.kind == "status"] == ["queued", "running", "succeeded"]
    # Artifact names cannot be used to reach other files.
    assert http.get(f"/v1/jobs/{job_id}/artifacts/../../uploads/models/{model_id}/config.json").status_code == 404
    assert http.get(f"/v1/jobs/{job_id}/artifacts/model%2F..%2F..%2Fattempt-1").status_code == 404


def _dense(model_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(model_dir)


def test_running_job_is_cancelled_and_leaves_no_files(http, celery_worker, service_settings, tiny_model_dir,
                                                      tiny_dataset_csv):
    model_id, ds_id = upload_inputs(http, tiny_model_dir, tiny_dataset_csv)
    slow = dict(FAST_OPTIONS, mask_steps=100_000)  # long enough to be caught mid-run
    job_id = http.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET,
                                         "options": slow}).json()["id"]
    wait_job(http, job_id, 300, until=lambda j: j["status"] == "running" and j["progress"] > 0,
             log=celery_worker.output)
    r = http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    job = wait_job(http, job_id, 120, log=celery_worker.output)
    assert job["status"] == "cancelled" and job["artifacts"] == []
    with session_scope(service_settings.db_url) as s:
        assert s.scalars(select(Artifact).where(Artifact.job_id == job_id)).all() == []
    assert not [f for f in stored_files(service_settings) if f.startswith(f"jobs/{job_id}/")]
    assert not (service_settings.work_dir / job_id).exists()


def test_killed_worker_process_is_reaped_and_the_job_retried(http, start_proc, service_settings,
                                                             tiny_model_dir, tiny_dataset_csv):
    """SIGKILL the child running a job: the lease expires, the reaper requeues it and attempt 2
    finishes it. The redelivered message (reject_on_worker_lost) finds the lease held: no-op."""
    import os
    import signal
    import sys

    from .conftest import settings_env, wait_for

    short = service_settings.model_copy(update={"lease_seconds": 10, "reaper_interval_seconds": 1})
    proc = start_proc([sys.executable, "-m", "api.cli", "worker"], settings_env(short), "worker-kill")
    wait_for(lambda: "ready." in proc.output() or proc.p.poll() is not None, 90, what="worker ready")
    model_id, ds_id = upload_inputs(http, tiny_model_dir, tiny_dataset_csv)
    # Long enough to be caught mid-run on an idle machine too (~5 ms a step there), short enough
    # for attempt 2 to finish well inside the wait below on a busy one.
    slow = dict(FAST_OPTIONS, mask_steps=2000)
    job_id = http.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET,
                                         "options": slow}).json()["id"]
    wait_job(http, job_id, 300, until=lambda j: j["status"] == "running" and j["progress"] > 0, log=proc.output)
    with session_scope(service_settings.db_url) as s:
        from api.models import Job

        worker_id = s.get(Job, job_id).worker_id
    child_pid = int(worker_id.split(":")[1])
    assert child_pid != proc.p.pid  # the prefork child, not the main worker process
    # Pretend the dead attempt had uploaded half its files: the reaper must remove them.
    from api.artifacts import ArtifactStore

    half = service_settings.resolved_data_dir() / "half.safetensors"
    half.write_bytes(b"partial")
    ArtifactStore(service_settings.artifacts).put_file(half, f"jobs/{job_id}/attempt-1/model/model.safetensors")
    os.kill(child_pid, signal.SIGKILL)
    job = wait_job(http, job_id, 600, log=proc.output)
    assert job["status"] == "succeeded" and job["attempts"] == 2, (job["error"], job["attempts"], proc.output()[-6000:])
    with session_scope(service_settings.db_url) as s:
        messages = [e.message or "" for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert any("requeued" in m for m in messages)
    # Only the final attempt's files are published; the killed attempt left none behind.
    keys = [f for f in stored_files(service_settings) if f.startswith(f"jobs/{job_id}/")]
    assert keys and all(k.startswith(f"jobs/{job_id}/attempt-2/") for k in keys)


def test_job_that_cannot_run_fails_with_type_and_message(http, celery_worker, service_settings):
    """A hub ID that is not in the local cache (no network here) passes the API's cheap checks,
    then fails on the worker: status failed, error type/field/message, no artifacts."""
    r = http.post("/v1/jobs", json={"model": "nobody-here/not-a-cached-model", "dataset": "tweet-sentiment",
                                    "budget": BUDGET, "options": FAST_OPTIONS})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["id"], 300, log=celery_worker.output)
    assert job["status"] == "failed", job
    assert job["error"]["type"] and job["error"]["message"]
    assert job["error"].get("field") == "model", job["error"]
    assert job["artifacts"] == [] and job["finished_at"]
    assert http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"] == []
