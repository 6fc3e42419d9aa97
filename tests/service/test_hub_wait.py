"""A long wait for the hub releases the worker (issue #14): the attempt ends, the job goes back to
the queue until the hub's time (jobstore.defer, claim), and runs again then on any worker.

Three layers: download_revision's decision (scripted child outcomes, no waiting), the job row's
rules on real Postgres (no claim before retry_at, deferrals not counted as deaths, cancel while
waiting, the reaper's re-send), and a real worker with the fake hub process: a 429 with a
Retry-After above the threshold frees the worker for another job, then the job succeeds."""
from __future__ import annotations

import sys
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from api import jobstore
from api.db import session_scope
from api.models import Job, JobEvent, utcnow
from vtrans_core.errors import CompressionError
from worker.hub_download import HubDeferred, download_revision

from .automation import hook_settings, tenants  # noqa: F401 (fixtures)
from .conftest import settings_env, wait_for
from .hub_fixtures import failed, fake_hub, scripted, submit_hub_job  # noqa: F401 (fake_hub: a fixture)
from .jobpath import wait_job
from .test_claims import _job, job_id  # noqa: F401 (job_id: a fixture, a queued hub job)

HUB = "http://hub.invalid"


# ------------------------------------------------------------------ the decision (hub_download)

def test_a_wait_above_the_threshold_is_handed_back_not_slept(monkeypatch, tmp_path):
    waits = scripted(monkeypatch, [failed(429, "120")])
    notes = []
    with pytest.raises(HubDeferred) as info:
        download_revision("acme/x", "a" * 40, tmp_path / "dest", endpoint=HUB, attempts=5, retry_seconds=600,
                          note=notes.append, defer_after=30)
    assert waits == [] and notes == []          # not slept here; the runner records the wait
    wait = info.value
    assert wait.seconds == 120 and wait.state["attempts"] == 1 and wait.state["waited"] == 120
    assert wait.message.startswith(f"waiting on the Hugging Face hub ({HUB}): download attempt 1 of 5 failed")
    assert wait.message.endswith("retrying in 120 s, as the hub asked (Retry-After: 120)")
    assert not (tmp_path / "dest").exists()


def test_a_short_wait_stays_on_the_worker(monkeypatch, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "model.safetensors").write_bytes(b"w")   # what the second (scripted) attempt downloads
    waits = scripted(monkeypatch, [failed(503), {"ok": True, "files": ["model.safetensors"]}])
    assert download_revision("acme/x", "a" * 40, dest, endpoint=HUB, attempts=5, retry_seconds=3.0,
                             defer_after=30) == dest.resolve()
    assert waits == [pytest.approx(0.2)]   # the schedule's first wait (3 s over 4 doubling waits), slept here


def test_the_bounds_hold_across_runs_through_the_state(monkeypatch, tmp_path):
    """5 attempts over 600 s (40, 80, 160, 320): a first run waited 120 s; the second continues at
    attempt 2 with 480 s left, is asked for 400 (deferred again); the third has 80 s left, is asked
    for 100 and fails saying so; and a run after the last attempt fails after it, not 5 more."""
    started = 1_700_000_000.0
    scripted(monkeypatch, [failed(429, "400")])
    with pytest.raises(HubDeferred) as info:
        download_revision("acme/x", "a" * 40, tmp_path / "d", endpoint=HUB, attempts=5, retry_seconds=600,
                          defer_after=30, state={"attempts": 1, "waited": 120.0, "started": started})
    assert info.value.state == {"attempts": 2, "waited": 520.0, "started": started}
    assert "download attempt 2 of 5 failed" in info.value.message

    scripted(monkeypatch, [failed(429, "100")])
    with pytest.raises(CompressionError) as error:
        download_revision("acme/x", "a" * 40, tmp_path / "d", endpoint=HUB, attempts=5, retry_seconds=600,
                          defer_after=30, state=info.value.state)
    assert "asked to wait 100 s before retrying (Retry-After), more than the 80 s left" in error.value.message

    outcomes = [failed(503)]
    scripted(monkeypatch, outcomes)
    with pytest.raises(CompressionError) as error:
        download_revision("acme/x", "a" * 40, tmp_path / "d", endpoint=HUB, attempts=5, retry_seconds=600,
                          defer_after=30, state={"attempts": 4, "waited": 300.0, "started": started})
    assert outcomes == [] and "still failing after 5 attempts" in error.value.message


# ------------------------------------------------------------------ the job row (jobstore, on Postgres)

def _due_now(url: str, job_id: str) -> None:
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(retry_at=utcnow() - timedelta(seconds=1)))


def test_a_deferred_job_waits_in_the_queue_until_its_time_and_says_so(service_settings, client, job_id):
    url, state = service_settings.db_url, {"attempts": 1, "waited": 60.0, "started": 1.0}
    first = jobstore.claim(url, job_id, "worker-a", 60, 1)       # max_attempts=1: one death allowed
    before = utcnow()
    retry_at = jobstore.defer(url, first, 60, lambda at: "waiting on the hub: try at noon", state, "message-1")
    assert before + timedelta(seconds=59) < retry_at < utcnow() + timedelta(seconds=61)
    row = _job(url, job_id)
    assert (row.status, row.stage, row.worker_id, row.lease_expires_at) == ("queued", "hub-wait", None, None)
    assert row.retry_at == retry_at and row.deferrals == 1 and row.hub_state == state
    assert row.retry_message_id == "message-1"
    got = client.get(f"/v1/jobs/{job_id}").json()
    assert got["status"] == "queued" and got["waiting_reason"] == "waiting on the hub: try at noon"
    assert datetime.fromisoformat(got["retry_at"]) == retry_at
    events = client.get(f"/v1/jobs/{job_id}/events", params={"format": "json"}).json()
    assert events[-1]["status"] == "queued" and events[-1]["stage"] == "hub-wait"
    assert events[-1]["message"] == "waiting on the hub: try at noon" and events[-1]["attempt"] == 1

    assert jobstore.claim(url, job_id, "worker-b", 60, 1) is None   # an early (duplicate) delivery: nothing
    assert _job(url, job_id).attempts == 1
    _due_now(url, job_id)
    second = jobstore.claim(url, job_id, "worker-b", 60, 1)          # the hub wait was not a death
    assert second is not None and second.attempt == 2
    row = _job(url, job_id)
    assert row.retry_at is None and row.wait_reason is None and row.hub_state == state   # kept for the download
    assert row.retry_message_id is None
    assert client.get(f"/v1/jobs/{job_id}").json()["retry_at"] is None


def test_a_job_waiting_for_the_hub_is_cancelled_at_once_and_never_claimed(service_settings, client, job_id):
    url = service_settings.db_url
    claim = jobstore.claim(url, job_id, "worker-a", 60, 3)
    assert jobstore.defer(url, claim, 60, lambda at: "waiting on the hub", {"attempts": 1}, "m")
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled" and r.json()["retry_at"] is None
    with session_scope(url) as s:
        last = s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc())).first()
    assert last == "cancelled while waiting to try the Hugging Face hub again"
    _due_now(url, job_id)
    assert jobstore.claim(url, job_id, "worker-b", 60, 3) is None


def test_no_requeue_once_a_cancel_was_requested(service_settings, job_id):
    url = service_settings.db_url
    claim = jobstore.claim(url, job_id, "worker-a", 60, 3)
    assert jobstore.request_cancel(url, job_id, claim.tenant_id) == "running"
    assert jobstore.defer(url, claim, 60, lambda at: "waiting", {}, "m") is None
    assert _job(url, job_id).status == "running"     # the worker ends it as cancelled (runner._defer)


def test_the_reaper_counts_deaths_not_hub_waits_and_resends_only_due_jobs(service_settings, job_id):
    from worker.tasks import _stale_queued

    url = service_settings.db_url
    claim = jobstore.claim(url, job_id, "worker-a", 60, 1)
    assert jobstore.defer(url, claim, 60, lambda at: "waiting", {}, "m")
    resend_all = service_settings.model_copy(update={"resend_queued_after_seconds": 0.0})
    assert job_id not in _stale_queued(resend_all)    # not due: a message would only be refused
    _due_now(url, job_id)
    assert job_id in _stale_queued(resend_all)        # due, still queued: its message may be lost
    jobstore.claim(url, job_id, "worker-b", -1, 1)     # attempt 2, whose worker "dies" at once
    jobstore.reap(url, 2)
    assert _job(url, job_id).status == "queued"        # one death of two allowed (the wait was none)


def test_the_runner_ends_the_attempt_and_sends_the_job_for_its_retry_time(service_settings, job_id, monkeypatch):
    from worker import celery_app, runner

    url = service_settings.db_url
    with session_scope(url) as s:
        row = s.get(Job, job_id)
        row.request = {**row.request, "model_source": {**row.request["model_source"], "revision": "b" * 40}}
    state = {"attempts": 1, "waited": 40.0, "started": 1.0}

    def refused(*args, **kwargs):
        raise HubDeferred(40, "waiting on the Hugging Face hub (x): ...; retrying in 40 s", state)

    sent = []
    monkeypatch.setattr(runner, "download_revision", refused)
    monkeypatch.setattr(celery_app, "send_job", lambda settings, job, eta=None, task_id=None:
                        sent.append((job, eta, task_id)))
    before = utcnow()
    assert runner.run_job(service_settings, job_id, "worker-a") == "deferred"
    row = _job(url, job_id)
    assert row.status == "queued" and row.hub_state == state and row.deferrals == 1
    assert before + timedelta(seconds=39) < row.retry_at < utcnow() + timedelta(seconds=41)
    assert row.wait_reason.startswith("waiting on the Hugging Face hub (x)")
    assert "its worker free for other jobs" in row.wait_reason and f"{row.retry_at:%H:%M:%S} UTC" in row.wait_reason
    assert sent == [(job_id, row.retry_at, row.retry_message_id)] and row.retry_message_id
    assert not (service_settings.work_dir / job_id).exists()


# ------------------------------------------------------------------ a real worker and the fake hub

def test_a_rate_limited_job_frees_the_worker_then_succeeds_after_the_wait(
        tmp_path, tenants, hook_settings, start_proc, fake_hub, tiny_dataset_csv):
    """One worker (one job at a time). A: 429 with Retry-After 25 s; C: 503 throughout (the
    schedule's 20 s wait), cancelled while it waits; B: no fault. A and C go back to the queue, B
    runs meanwhile, an early duplicate of A's message does nothing, C never runs again, A succeeds
    after its 25 s. max_attempts=1: a hub wait is not counted as a worker death."""
    from conftest import build_tiny_bert_dir

    from worker.celery_app import send_job

    settings = hook_settings.model_copy(update={
        "hub_download_attempts": 3, "hub_retry_seconds": 60.0, "hub_requeue_after_seconds": 1.0,
        "cancel_check_seconds": 0.5, "max_attempts": 1, "worker_max_tasks_per_child": 50})
    model_dir = build_tiny_bert_dir(tmp_path / "model")
    t = tenants(settings)
    ds = t.http.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
    assert ds.status_code == 201, ds.text

    def hub_job(repo: str, **fault) -> str:
        return submit_hub_job(t.http, settings.db_url, fake_hub, repo, model_dir, ds.json()["id"], **fault)

    def events(job_id: str) -> list[dict]:
        return t.http.get(f"/v1/jobs/{job_id}/events", params={"format": "json"}).json()

    def asked(repo: str) -> list[dict]:
        return [q for q in fake_hub.requests() if q["repo"] == repo]

    a = hub_job("acme/limited-bert", status=429, count=1, retry_after="25")
    c = hub_job("acme/down-bert", status=503, count=-1)
    b = hub_job("acme/free-bert")
    env = {**settings_env(settings), "HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-w")}
    worker = start_proc([sys.executable, "-m", "api.cli", "worker"], env, "worker")
    wait_for(lambda: "ready." in worker.output() or worker.p.poll() is not None, 300, what="worker ready")
    assert worker.p.poll() is None, worker.output()
    for each in (a, c, b):
        send_job(settings, each)

    job = wait_job(t.http, a, 300, until=lambda j: j["retry_at"] is not None, log=worker.output)
    assert job["status"] == "queued" and job["stage"] == "hub-wait", job
    reason = job["waiting_reason"]
    assert reason.startswith(f"waiting on the Hugging Face hub ({fake_hub.url}): download attempt 1 of 3"), reason
    assert "429" in reason and "as the hub asked (Retry-After: 25)" in reason and "tried again at" in reason
    retry_at = datetime.fromisoformat(job["retry_at"])
    assert any(e.get("stage") == "hub-wait" and e.get("message") == reason for e in events(a))
    send_job(settings, a)   # an early duplicate: refused by the claim whenever it is taken

    c_retry_at = datetime.fromisoformat(wait_job(t.http, c, 300, until=lambda j: j["retry_at"] is not None,
                                                 log=worker.output)["retry_at"])
    r = t.http.post(f"/v1/jobs/{c}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
    c_asked = len(asked("acme/down-bert"))

    done_b = wait_job(t.http, b, 600, log=worker.output)
    assert done_b["status"] == "succeeded", (done_b, worker.output()[-3000:])
    b_claimed = datetime.fromisoformat(next(e["created_at"] for e in events(b) if e.get("status") == "running"))
    assert b_claimed < retry_at, "the second job did not run while the first waited for the hub"

    done_a = wait_job(t.http, a, 600, log=worker.output)
    assert done_a["status"] == "succeeded", (done_a, worker.output()[-3000:])
    assert done_a["attempts"] == 2 and done_a["retry_at"] is None and done_a["waiting_reason"] is None
    claims = [e for e in events(a) if e["kind"] == "status" and e.get("message", "").startswith("attempt ")]
    assert [e["attempt"] for e in claims] == [1, 2], claims
    assert datetime.fromisoformat(claims[1]["created_at"]) >= retry_at - timedelta(seconds=1)
    mine = asked("acme/limited-bert")
    faulted = next(i for i, q in enumerate(mine) if q.get("fault"))
    assert mine[faulted + 1]["at"] - mine[faulted]["at"] >= 25, "the hub was asked again before its Retry-After"

    # C's delayed message is due (and taken when the worker is free): it does nothing.
    wait_for(lambda: utcnow() > c_retry_at + timedelta(seconds=5), 120, what="C's retry time")
    assert t.http.get(f"/v1/jobs/{c}").json()["status"] == "cancelled"
    assert [e["attempt"] for e in events(c) if e.get("message", "").startswith("attempt ")] == [1]
    assert len(asked("acme/down-bert")) == c_asked
    assert worker.p.poll() is None, worker.output()[-3000:]
