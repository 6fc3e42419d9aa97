"""The durable-job rules on real Postgres: conditional claims, leases, the reaper, cooperative
cancellation through the progress callback, final artifacts in one transaction, event order."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from api import jobstore
from api.db import session_scope
from api.models import Artifact, Job, JobEvent


@pytest.fixture
def job_id(client):
    # A hub ID and the built-in dataset: no upload needed to make a queued row.
    r = client.post("/v1/jobs", json={"model": "org/some-bert", "dataset": "tweet-sentiment",
                                      "budget": {"kind": "params", "target": 0.5}})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _job(url, job_id) -> Job:
    with session_scope(url) as s:
        return s.get(Job, job_id)


def _events(url, job_id) -> list[JobEvent]:
    with session_scope(url) as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_second_delivery_cannot_claim_a_running_job(service_settings, job_id):
    url = service_settings.db_url
    first = jobstore.claim(url, job_id, "worker-a", 60, 3)
    assert first is not None and first.attempt == 1
    assert jobstore.claim(url, job_id, "worker-b", 60, 3) is None
    job = _job(url, job_id)
    assert job.status == "running" and job.worker_id == "worker-a" and job.attempts == 1
    assert job.lease_expires_at is not None and job.started_at is not None


def test_duplicate_delivery_is_a_no_op_in_the_runner(service_settings, job_id):
    from worker.runner import run_job

    url = service_settings.db_url
    assert jobstore.claim(url, job_id, "worker-a", 60, 3) is not None
    events_before = len(_events(url, job_id))
    assert run_job(service_settings, job_id, "worker-b") == "skipped"
    assert _job(url, job_id).worker_id == "worker-a" and len(_events(url, job_id)) == events_before


def test_expired_lease_can_be_reclaimed_and_the_old_attempt_loses(service_settings, job_id):
    url = service_settings.db_url
    old = jobstore.claim(url, job_id, "worker-a", -1, 3)  # lease already expired: worker "died"
    new = jobstore.claim(url, job_id, "worker-b", 60, 3)
    assert new is not None and new.attempt == 2
    owned, _ = jobstore.report_progress(url, old, "masks", 0.3, {}, 60, renew=True)
    assert owned is False
    assert jobstore.finish(url, old, "succeeded", metrics={}, artifacts=[
        {"name": "x", "storage_key": "jobs/x", "size_bytes": 1, "media_type": "text/plain"}]) is False
    with session_scope(url) as s:
        assert s.scalars(select(Artifact).where(Artifact.job_id == job_id)).all() == []
    assert _job(url, job_id).worker_id == "worker-b"


def test_reaper_requeues_then_fails_after_max_attempts(service_settings, job_id):
    url = service_settings.db_url
    assert jobstore.claim(url, job_id, "worker-a", -1, 2) is not None
    assert job_id in jobstore.reap(url, max_attempts=2)
    job = _job(url, job_id)
    assert job.status == "queued" and job.worker_id is None and job.attempts == 1
    assert jobstore.claim(url, job_id, "worker-b", -1, 2).attempt == 2
    assert job_id not in jobstore.reap(url, max_attempts=2)
    job = _job(url, job_id)
    assert job.status == "failed" and job.error["type"] == "WorkerLost" and "2 attempts" in job.error["message"]
    assert jobstore.claim(url, job_id, "worker-c", 60, 2) is None


def test_reaper_leaves_live_leases_alone(service_settings, job_id):
    url = service_settings.db_url
    jobstore.claim(url, job_id, "worker-a", 60, 3)
    assert job_id not in jobstore.reap(url, max_attempts=3)
    assert _job(url, job_id).status == "running"


def test_cancel_reaches_a_running_job_through_the_progress_callback(service_settings, job_id, client):
    from vtrans_core.errors import CompressionCancelled
    from worker.runner import Progress

    url = service_settings.db_url
    claim = jobstore.claim(url, job_id, "worker-a", 60, 3)
    progress = Progress(service_settings, claim)
    progress("masks", 0.2, {"step": 1, "loss": 0.7})
    job = _job(url, job_id)
    assert job.stage == "masks" and job.progress == pytest.approx(0.2) and job.metrics == {"step": 1, "loss": 0.7}
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    with pytest.raises(CompressionCancelled):
        progress("masks", 0.25, {"step": 2})
    assert jobstore.finish(url, claim, "cancelled")
    assert _job(url, job_id).status == "cancelled"


def test_reaper_ends_a_cancel_requested_job_whose_worker_died(service_settings, job_id, client):
    url = service_settings.db_url
    jobstore.claim(url, job_id, "worker-a", -1, 3)
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert job_id not in jobstore.reap(url, max_attempts=3)
    assert _job(url, job_id).status == "cancelled"


def test_success_makes_artifacts_final_and_events_are_ordered(service_settings, job_id, client):
    url = service_settings.db_url
    claim = jobstore.claim(url, job_id, "worker-a", 60, 3)
    for i in range(3):
        jobstore.report_progress(url, claim, "finetune", 0.5 + i / 10, {"step": i}, 60, renew=False)
    arts = [{"name": "metrics.json", "storage_key": f"jobs/{job_id}/attempt-1/metrics.json", "size_bytes": 2,
             "media_type": "application/json"}]
    assert jobstore.finish(url, claim, "succeeded", metrics={"speedup": 2.0}, artifacts=arts)
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "succeeded" and body["progress"] == 1.0 and body["metrics"] == {"speedup": 2.0}
    assert [a["name"] for a in body["artifacts"]] == ["metrics.json"]
    events = _events(url, job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.status for e in events if e.kind == "status"] == ["queued", "running", "succeeded"]
    assert [e.metrics["step"] for e in events if e.kind == "progress"] == [0, 1, 2]
    # A finished job cannot be cancelled any more.
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_events_are_published_after_commit(service_settings, job_id, monkeypatch):
    from api import event_bus

    seen = []

    def publish(jid, event):  # at publish time the row must already be visible to other sessions
        with session_scope(service_settings.db_url) as s:
            seen.append(s.scalar(select(JobEvent.seq).where(JobEvent.job_id == jid, JobEvent.seq == event["seq"])))

    monkeypatch.setattr(event_bus, "publish", publish)
    claim = jobstore.claim(service_settings.db_url, job_id, "worker-a", 60, 3)
    jobstore.report_progress(service_settings.db_url, claim, "load", 0.01, {}, 60, renew=True)
    assert seen == [2, 3]


def test_concurrent_claims_have_exactly_one_winner(service_settings, job_id):
    import threading

    barrier = threading.Barrier(6)
    results = []

    def contender(i):
        barrier.wait()
        results.append(jobstore.claim(service_settings.db_url, job_id, f"worker-{i}", 60, 3))

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [r for r in results if r is not None]
    assert len(results) == 6 and len(winners) == 1
    job = _job(service_settings.db_url, job_id)
    assert job.attempts == 1 and job.worker_id == winners[0].worker_id
