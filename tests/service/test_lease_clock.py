"""Leases on the database's clock (issue #14, with workers on several machines as in #16).

A job's lease (claim, progress renewals, the heartbeat, the reaper), the reaper's re-send cutoff
and a webhook sender's lock are written and checked on the database's clock (db_now), so a worker
whose clock runs an hour ahead cannot take over an attempt that is alive on another machine
(two attempts at once), one running behind does not renew a lease that others already see as
expired, and one running behind still sees a really expired lease as expired. The clocks are
skewed in this process, as test_hub_wait_clock.py does for retry_at. Real Postgres."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from sqlalchemy import update

from api import jobstore, webhook_delivery, webhooks
from api.db import session_scope
from api.models import Job, WebhookEndpoint, WebhookMessage, new_id

from .hub_fixtures import settled_job_id  # noqa: F401 (a fixture: a queued hub job, ended after the test)
from .test_claims import _job

AHEAD, BEHIND = timedelta(hours=1), timedelta(hours=-1)


@contextmanager
def _clock(monkeypatch, offset: timedelta):
    """Within the block, every clock this process reads as utcnow (the service's modules import
    it by name) runs `offset` off the database's: a worker on a machine with a wrong clock."""
    def skewed() -> datetime:
        return datetime.now(timezone.utc) + offset

    with monkeypatch.context() as m:
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] in ("api", "worker") and callable(getattr(module, "utcnow", None)):
                m.setattr(module, "utcnow", skewed)
        yield


def _expire_lease(url: str, job_id: str) -> None:
    """The lease really ran out, by the database's clock: its worker died a while ago."""
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=jobstore.db_now(s) - timedelta(seconds=1)))


def test_a_worker_an_hour_ahead_cannot_take_over_a_live_lease(service_settings, settled_job_id, monkeypatch):
    url = service_settings.db_url
    live = jobstore.claim(url, settled_job_id, "worker-a", 600, 3)
    with _clock(monkeypatch, AHEAD):
        assert jobstore.claim(url, settled_job_id, "worker-ahead", 600, 3) is None
        # nor does its reaper requeue it (the reaper scans the whole table: other tests' dead
        # attempts may be reaped too, so only this job's absence is asserted)
        assert settled_job_id not in jobstore.reap(url, max_attempts=3)
    job = _job(url, settled_job_id)
    assert (job.status, job.worker_id, job.attempts) == ("running", "worker-a", 1)
    assert jobstore.renew_lease(url, live, 600)          # the live attempt still owns it


def test_a_lease_renewed_by_a_worker_an_hour_behind_stays_valid_for_the_others(service_settings, settled_job_id,
                                                                                monkeypatch):
    url = service_settings.db_url
    with _clock(monkeypatch, BEHIND):
        live = jobstore.claim(url, settled_job_id, "worker-behind", 600, 3)
        assert jobstore.renew_lease(url, live, 600)                                   # the heartbeat
        assert jobstore.report_progress(url, live, "masks", 0.2, {}, 600, renew=True) == (True, False)
    # the other workers' clocks are right
    assert jobstore.claim(url, settled_job_id, "worker-b", 600, 3) is None
    assert settled_job_id not in jobstore.reap(url, max_attempts=3)
    assert _job(url, settled_job_id).worker_id == "worker-behind"


def test_a_worker_an_hour_behind_still_sees_an_expired_lease_expired(service_settings, settled_job_id, monkeypatch):
    url = service_settings.db_url
    jobstore.claim(url, settled_job_id, "worker-dead", 600, 3)
    _expire_lease(url, settled_job_id)
    with _clock(monkeypatch, BEHIND):
        assert settled_job_id in jobstore.reap(url, max_attempts=3)                    # its reaper requeues it
        taken = jobstore.claim(url, settled_job_id, "worker-behind", 600, 3)
        assert taken is not None and taken.attempt == 2
        _expire_lease(url, settled_job_id)                                            # and takes over a dead one
        assert jobstore.claim(url, settled_job_id, "worker-behind-2", 600, 3).attempt == 3


def test_the_reaper_resends_a_due_job_by_the_database_clock(service_settings, settled_job_id, monkeypatch):
    """A job waiting for the hub whose retry message was lost, or is held by a receiving worker
    whose clock runs behind (it fires the eta late by its lag): any worker's reaper re-sends it
    resend_queued_after_seconds after retry_at by the database's clock, whatever its own clock."""
    from worker.tasks import _stale_queued

    url = service_settings.db_url
    claim = jobstore.claim(url, settled_job_id, "worker-a", 600, 3)
    jobstore.defer(url, claim, 60, lambda at: "waiting", {}, "m-1")
    with _clock(monkeypatch, AHEAD):
        assert settled_job_id not in _stale_queued(service_settings)   # not due: a message would only be refused
    with session_scope(url) as s:
        long_ago = jobstore.db_now(s) - timedelta(seconds=service_settings.resend_queued_after_seconds + 5)
        s.execute(update(Job).where(Job.id == settled_job_id).values(retry_at=long_ago, updated_at=long_ago))
    with _clock(monkeypatch, BEHIND):
        assert settled_job_id in _stale_queued(service_settings)


def _message(url: str, tenant: str) -> str:
    """A pending outbox row of an endpoint of its own, written by this process (its clock)."""
    with session_scope(url) as s:
        s.add(WebhookEndpoint(id=new_id("wh"), tenant_id=tenant, url="http://127.0.0.1:9/hook",
                              events=["job.succeeded"], secret=webhooks.new_secret()))
        s.flush()
        (msg_id,) = webhooks.emit(s, tenant, "job.succeeded", {"id": "job_x"})
    return msg_id


def _claim(url: str, msg_id: str, lease: float) -> bool:
    """claim_due, putting back any other test's message it took (the database is shared)."""
    claimed = webhook_delivery.claim_due(url, lease, limit=1000)
    with session_scope(url) as s:
        for c in claimed:
            if c.id != msg_id:
                s.execute(update(WebhookMessage).where(WebhookMessage.id == c.id)
                          .values(locked_until=None, attempts=c.attempt - 1))
    return any(c.id == msg_id for c in claimed)


def test_webhook_locks_and_due_times_are_on_the_database_clock(service_settings, monkeypatch):
    url, tenant = service_settings.db_url, f"t-{new_id('clock')}"
    with _clock(monkeypatch, AHEAD):
        msg_id = _message(url, tenant)       # emitted by a process an hour ahead: due now all the same
    assert _claim(url, msg_id, 60)
    with _clock(monkeypatch, AHEAD):         # a sender an hour ahead leaves a live lock alone
        assert not _claim(url, msg_id, 60)
    with session_scope(url) as s:            # the lock ran out (its sender died)
        s.execute(update(WebhookMessage).where(WebhookMessage.id == msg_id)
                  .values(locked_until=jobstore.db_now(s) - timedelta(seconds=1)))
    with _clock(monkeypatch, BEHIND):        # a sender an hour behind sees that and takes the message
        assert _claim(url, msg_id, 60)
    with session_scope(url) as s:
        row = s.get(WebhookMessage, msg_id)
        now = jobstore.db_now(s)
    assert now + timedelta(seconds=50) < row.locked_until <= now + timedelta(seconds=60)
    assert row.attempts == 2


def test_a_worker_an_hour_behind_is_still_a_live_worker_of_its_queue(service_settings, monkeypatch):
    """The registry's beats (worker_registry) are on the database's clock too: read on an API
    process with a right clock, a worker whose machine runs an hour behind is alive, and one whose
    machine runs ahead does not keep a dead worker's queue looking served."""
    from api import worker_registry

    url, queue = service_settings.db_url, f"q-{new_id('clock')}"
    worker_id = f"clock-host:1:{queue}"
    try:
        with _clock(monkeypatch, BEHIND):
            worker_registry.beat(url, worker_id, "clock-host", [queue])
        with session_scope(url) as s:
            # The query itself, not the API process's one-second reuse of its answer: the rows
            # are changed behind the registry's back here.
            assert worker_registry.read_live_queues(s, stale_after=60).get(queue) == 1
            s.execute(update(worker_registry.Worker).where(worker_registry.Worker.id == worker_id)
                      .values(last_seen=jobstore.db_now(s) - timedelta(seconds=120)))   # it stopped beating
        with _clock(monkeypatch, AHEAD), session_scope(url) as s:
            assert worker_registry.read_live_queues(s, stale_after=60).get(queue) is None
    finally:
        worker_registry.forget(url, worker_id)
