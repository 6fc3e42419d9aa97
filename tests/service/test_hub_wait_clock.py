"""Clocks and early deliveries of a job waiting for the hub (issue #14, after the requeue).

retry_at is written and checked on the database's clock (jobstore.db_now), so a worker whose
clock runs ahead can neither claim a waiting job early nor push its retry an hour out. The broker
still fires the retry message by the receiving worker's clock: when that runs ahead, the message
arrives before retry_at, and it re-schedules itself for the time left (exactly once, however many
times it is delivered) instead of waiting for the reaper's re-send. On real Postgres; the last
test with a real worker and broker."""
from __future__ import annotations

import sys
import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import update

from api import jobstore
from api.db import session_scope
from api.models import Job, utcnow

from .conftest import settings_env, wait_for
from .hub_fixtures import settled_job_id  # noqa: F401 (a fixture: a queued hub job, ended after the test)
from .test_claims import _job


def _worker_clock(monkeypatch, offset: timedelta) -> None:
    """This process's clock (what a worker reads as utcnow) runs `offset` off the database's."""
    import api.jobstore
    import api.models

    def skewed() -> datetime:
        return datetime.now(timezone.utc) + offset

    monkeypatch.setattr(api.jobstore, "utcnow", skewed)
    monkeypatch.setattr(api.models, "utcnow", skewed)


def _sends(monkeypatch) -> list[dict]:
    from worker import celery_app

    sent: list[dict] = []
    monkeypatch.setattr(celery_app, "send_job", lambda settings, job, **kw: sent.append({"job": job, **kw}))
    return sent


def test_a_worker_clock_an_hour_ahead_neither_claims_early_nor_delays_the_retry(service_settings, settled_job_id,
                                                                                monkeypatch):
    url = service_settings.db_url
    _worker_clock(monkeypatch, timedelta(hours=1))
    claim = jobstore.claim(url, settled_job_id, "worker-ahead", 60, 3)
    retry_at = jobstore.defer(url, claim, 60, lambda at: "waiting", {}, "m-1")
    real = datetime.now(timezone.utc)
    assert real + timedelta(seconds=55) < retry_at < real + timedelta(seconds=65)   # not 1 h + 60 s out
    assert jobstore.claim(url, settled_job_id, "worker-ahead", 60, 3) is None   # by its clock, retry_at is long past

    _worker_clock(monkeypatch, timedelta(hours=-1))   # and one behind takes it once the database says it is due
    with session_scope(url) as s:
        due = jobstore.db_now(s) - timedelta(seconds=1)
        s.execute(update(Job).where(Job.id == settled_job_id).values(retry_at=due))
    assert jobstore.claim(url, settled_job_id, "worker-behind", 60, 3) is not None


def test_the_retry_message_arriving_early_is_sent_again_for_the_time_left_once(service_settings, settled_job_id,
                                                                               monkeypatch):
    from worker.runner import run_job

    url = service_settings.db_url
    claim = jobstore.claim(url, settled_job_id, "worker-a", 60, 3)
    jobstore.defer(url, claim, 60, lambda at: "waiting", {}, "m-1")
    sent = _sends(monkeypatch)

    assert run_job(service_settings, settled_job_id, "worker-b", delivery_id="m-1") == "rescheduled"
    assert len(sent) == 1 and sent[0]["job"] == settled_job_id and 55 < sent[0]["countdown"] <= 60, sent
    row = _job(url, settled_job_id)
    assert row.retry_message_id == sent[0]["task_id"] != "m-1"
    assert (row.status, row.attempts, row.stage) == ("queued", 1, "hub-wait")   # not claimed, nothing else changed

    # A duplicate of the same message, any other message, a delivery without an id: nothing.
    for other in ("m-1", "some-other-message", None):
        assert run_job(service_settings, settled_job_id, "worker-b", delivery_id=other) == "skipped"
    assert len(sent) == 1 and _job(url, settled_job_id).retry_message_id == sent[0]["task_id"]

    # The re-sent message, early again (another fast clock): re-scheduled again, the id handed on.
    assert run_job(service_settings, settled_job_id, "worker-c", delivery_id=sent[0]["task_id"]) == "rescheduled"
    assert len(sent) == 2 and _job(url, settled_job_id).retry_message_id == sent[1]["task_id"]

    # Due: the claim takes it; a late copy of the current message then finds it running.
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == settled_job_id).values(retry_at=utcnow() - timedelta(seconds=1)))
    assert jobstore.reschedule_early(url, settled_job_id, sent[1]["task_id"], "m-x") is None
    assert jobstore.claim(url, settled_job_id, "worker-d", 60, 3) is not None
    assert jobstore.reschedule_early(url, settled_job_id, sent[1]["task_id"], "m-y") is None


def test_concurrent_deliveries_of_one_early_message_reschedule_it_once(service_settings, settled_job_id):
    url = service_settings.db_url
    claim = jobstore.claim(url, settled_job_id, "worker-a", 60, 3)
    jobstore.defer(url, claim, 60, lambda at: "waiting", {}, "m-1")
    results: list[float | None] = []
    start = threading.Barrier(6)

    def deliver(n: int) -> None:
        start.wait()
        results.append(jobstore.reschedule_early(url, settled_job_id, "m-1", f"m-new-{n}"))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in results if r is not None]) == 1, results
    assert _job(url, settled_job_id).retry_message_id.startswith("m-new-")


def test_a_real_worker_reschedules_an_early_retry_message_instead_of_dropping_it(
        service_settings, settled_job_id, start_proc, client):
    """The job's retry message reaches a real worker 10 s before retry_at (as when the sender's
    clock runs 10 s ahead of the database's); the reaper would re-send it only after 900 s. The
    worker sends it again for the time left, and the job is claimed at retry_at."""
    from worker.celery_app import send_job

    settings = service_settings.model_copy(update={"queue": f"{service_settings.queue}-early",
                                                   "resend_queued_after_seconds": 900.0})
    url = settings.db_url
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == settled_job_id).values(queue=settings.queue))
    worker = start_proc([sys.executable, "-m", "api.cli", "worker"], settings_env(settings), "worker")
    wait_for(lambda: "ready." in worker.output() or worker.p.poll() is not None, 300, what="worker ready")
    assert worker.p.poll() is None, worker.output()

    claim = jobstore.claim(url, settled_job_id, "worker-elsewhere", 60, 3)
    retry_at = jobstore.defer(url, claim, 10, lambda at: "waiting on the hub", {}, "retry-message-1")
    send_job(settings, settled_job_id, task_id="retry-message-1")   # due now by a clock 10 s ahead: early here

    def claimed_again():
        events = client.get(f"/v1/jobs/{settled_job_id}/events", params={"format": "json"}).json()
        return [e for e in events if e.get("message", "").startswith("attempt 2 claimed")]

    wait_for(lambda: claimed_again() or worker.p.poll() is not None, 120, what="the second attempt's claim")
    claimed_at = datetime.fromisoformat(claimed_again()[0]["created_at"])
    assert retry_at - timedelta(seconds=1) <= claimed_at < retry_at + timedelta(seconds=20), (claimed_at, retry_at)
    assert "sent again for then" in worker.output(), worker.output()[-3000:]
    assert _job(url, settled_job_id).retry_message_id is None

