"""Job state transitions shared by the API and the worker. The job row is the truth.

Every transition is one conditional UPDATE, so two actors (two deliveries of the same broker
message, a worker and the reaper, a worker and a cancel request) can never both win.
Events are recorded in the same transaction as the change they describe and published to the
event bus only after that transaction commits; so are the webhook outbox rows of a job that
reaches a terminal status (api/webhooks.emit_job_status).

Leases and retry_at are written and compared on the database's clock (db.db_now), never on
the worker's: with workers on several machines, one whose clock runs ahead by more than a lease
would otherwise take over an attempt alive elsewhere, and one whose clock runs behind would
renew a lease that the others already see as expired.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from . import event_bus, webhooks
from .db import db_now, session_scope
from .models import Artifact, Job, JobEvent, utcnow

log = logging.getLogger("vtrans.jobs")


def event_to_dict(ev: JobEvent) -> dict[str, Any]:
    return {"seq": ev.seq, "kind": ev.kind, "status": ev.status, "stage": ev.stage, "fraction": ev.fraction,
            "metrics": ev.metrics, "message": ev.message, "attempt": ev.attempt,
            "created_at": ev.created_at.isoformat()}


def add_event(session: Session, job_id: str, tenant_id: str, kind: str, *, status: str | None = None,
              stage: str | None = None, fraction: float | None = None, metrics: dict | None = None,
              message: str | None = None, attempt: int = 0) -> dict[str, Any]:
    # The per-job counter is bumped with an UPDATE: its row lock orders concurrent writers, so seq
    # is gap-free and commit-ordered per job (what an SSE replay by seq needs).
    seq = session.execute(update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1)
                          .returning(Job.event_seq).execution_options(synchronize_session=False)).scalar_one()
    ev = JobEvent(job_id=job_id, tenant_id=tenant_id, seq=seq, kind=kind, status=status, stage=stage,
                  fraction=fraction, metrics=metrics, message=message, attempt=attempt, created_at=utcnow())
    session.add(ev)
    session.flush()
    return event_to_dict(ev)


def add_first_event(session: Session, job: Job, kind: str, **fields: Any) -> dict[str, Any]:
    """add_event for a job row not yet written (insert_job): its first event is seq 1, set on
    the row itself, so the submit spends no UPDATE round trip on the counter and both rows go
    out in one flush. No other writer can know the job before it is committed."""
    job.event_seq = 1
    ev = JobEvent(job_id=job.id, tenant_id=job.tenant_id, seq=1, kind=kind, created_at=utcnow(), attempt=0,
                  **fields)
    session.add(ev)
    return event_to_dict(ev)


def publish(job_id: str, events: Iterable[dict[str, Any]]) -> None:
    for ev in events:
        try:
            event_bus.publish(job_id, ev)
        except Exception:  # live updates are best effort; the rows are the record
            log.exception("event bus publish failed for job %s", job_id)


@dataclass
class Claim:
    job_id: str
    tenant_id: str
    worker_id: str
    attempt: int


# A delivery this close before a job's retry_at still claims it: Celery fires an eta task by the
# receiving worker's clock, a hair early at times. An earlier delivery of the job's own retry
# message is re-scheduled for the time left (reschedule_early); any other early one is dropped.
RETRY_AT_SLACK = timedelta(seconds=1)


def claim(db_url: str, job_id: str, worker_id: str, lease_seconds: float, max_attempts: int) -> Claim | None:
    """Take the job if it is queued (and its retry_at, if any, has come), or running on a lease
    that expired. None: someone else has it, or it is not due yet. Attempts that ended by going
    back to the queue to wait for the hub (`deferrals`) do not count against max_attempts: that
    limit is about workers dying, and the hub waits have their own bounds (hub_download.py)."""
    with session_scope(db_url) as s:
        now = db_now(s)   # the lease and retry_at are the database's time, whoever wrote them
        due = now + RETRY_AT_SLACK
        stmt = (update(Job)
                .where(Job.id == job_id, Job.cancel_requested.is_(False),
                       Job.attempts - Job.deferrals < max_attempts,
                       or_(and_(Job.status == "queued",
                                or_(Job.retry_at.is_(None), Job.retry_at <= due)),
                           and_(Job.status == "running", Job.lease_expires_at < now)))
                .values(status="running", worker_id=worker_id, attempts=Job.attempts + 1,
                        lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now,
                        started_at=now, stage="load", progress=0.0, retry_at=None, wait_reason=None,
                        retry_message_id=None)
                .returning(Job.attempts, Job.tenant_id)
                .execution_options(synchronize_session=False))
        row = s.execute(stmt).first()
        if row is None:
            return None
        attempt, tenant = row
        ev = add_event(s, job_id, tenant, "status", status="running", attempt=attempt,
                       message=f"attempt {attempt} claimed by {worker_id}")
    publish(job_id, [ev])
    return Claim(job_id, tenant, worker_id, attempt)


def _owned(claim_: Claim):
    return and_(Job.id == claim_.job_id, Job.worker_id == claim_.worker_id,
                Job.attempts == claim_.attempt, Job.status == "running")


def report_progress(db_url: str, claim_: Claim, stage: str, fraction: float, metrics: dict,
                    lease_seconds: float, renew: bool) -> tuple[bool, bool]:
    """Record a progress event (and renew the lease). Returns (still_owned, cancel_requested)."""
    values: dict[str, Any] = {"stage": stage, "progress": fraction, "updated_at": utcnow()}
    if metrics:
        values["metrics"] = metrics
    with session_scope(db_url) as s:
        if renew:   # on the clock the other workers check it against (db_now)
            values["lease_expires_at"] = db_now(s) + timedelta(seconds=lease_seconds)
        row = s.execute(update(Job).where(_owned(claim_)).values(**values).returning(Job.cancel_requested)
                        .execution_options(synchronize_session=False)).first()
        if row is None:
            return False, False
        ev = add_event(s, claim_.job_id, claim_.tenant_id, "progress", stage=stage, fraction=fraction,
                       metrics=metrics or None, attempt=claim_.attempt)
    publish(claim_.job_id, [ev])
    return True, bool(row[0])


def note(db_url: str, claim_: Claim, message: str) -> bool:
    """A status message of the running attempt (e.g. "resumed from checkpoint: ..."), if it still
    owns the job. False otherwise."""
    with session_scope(db_url) as s:
        owned = s.execute(select(Job.id).where(_owned(claim_))).first()
        if owned is None:
            return False
        ev = add_event(s, claim_.job_id, claim_.tenant_id, "status", status="running", message=message,
                       attempt=claim_.attempt)
    publish(claim_.job_id, [ev])
    return True


def defer(db_url: str, claim_: Claim, wait_seconds: float, reason: Callable[[datetime], str], hub_state: dict,
          message_id: str) -> datetime | None:
    """End the attempt by sending the job back to the queue for `wait_seconds` (it waits for the
    hub: a long wait must not hold a worker). retry_at is counted on the database's clock
    (db_now), the one the claim checks it against; `reason(retry_at)` is the waiting_reason.
    The caller then sends the broker message `message_id` with eta retry_at (recorded on the
    row: only that message re-schedules itself when it arrives early). Returns retry_at; None
    when the attempt no longer owns the job or a cancel was requested meanwhile (the caller
    ends it as cancelled instead)."""
    with session_scope(db_url) as s:
        now = db_now(s)   # also updated_at: the reaper's re-send cutoff reads it on this clock
        retry_at = now + timedelta(seconds=wait_seconds)
        message = reason(retry_at)
        row = s.execute(update(Job).where(_owned(claim_), Job.cancel_requested.is_(False))
                        .values(status="queued", stage="hub-wait", worker_id=None, lease_expires_at=None,
                                retry_at=retry_at, wait_reason=message, hub_state=hub_state,
                                retry_message_id=message_id, deferrals=Job.deferrals + 1, updated_at=now)
                        .returning(Job.id).execution_options(synchronize_session=False)).first()
        if row is None:
            return None
        ev = add_event(s, claim_.job_id, claim_.tenant_id, "status", status="queued", stage="hub-wait",
                       message=message, attempt=claim_.attempt)
    publish(claim_.job_id, [ev])
    return retry_at


def reschedule_early(db_url: str, job_id: str, delivered_id: str | None, new_id: str) -> float | None:
    """A delivery the claim refused: when it is the job's current retry message (`delivered_id`
    = retry_message_id) and the job still waits for a retry_at that has not come, hand the row
    `new_id` and return the seconds left until retry_at; the caller sends message `new_id` that
    much later. Early because its eta was read on a clock running ahead of the database's (the
    sending or the receiving worker's), or delivered early: dropping it would leave the job to
    the reaper's re-send, up to resend_queued_after_seconds late. The conditional UPDATE lets one
    of several deliveries of the same message win: a duplicate, or a delivery of a message this
    already replaced, finds another id on the row and does nothing (None), as does any other."""
    if not delivered_id:
        return None
    with session_scope(db_url) as s:
        now = db_now(s)
        row = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False),
                                          Job.retry_message_id == delivered_id, Job.retry_at > now + RETRY_AT_SLACK)
                        .values(retry_message_id=new_id).returning(Job.retry_at)
                        .execution_options(synchronize_session=False)).first()
    return None if row is None else (row[0] - now).total_seconds()


def cancel_state(db_url: str, claim_: Claim) -> tuple[bool, bool]:
    """(still_owned, cancel_requested), writing nothing: what a worker polls while it waits on
    something that reports no progress (a hub download)."""
    with session_scope(db_url) as s:
        row = s.execute(select(Job.cancel_requested).where(_owned(claim_))).first()
    return (False, False) if row is None else (True, bool(row[0]))


def renew_lease(db_url: str, claim_: Claim, lease_seconds: float) -> bool:
    """Extend the lease of an attempt that is alive but has nothing to report (the worker's
    heartbeat thread). No event is written. False when the attempt no longer owns the job."""
    with session_scope(db_url) as s:
        row = s.execute(update(Job).where(_owned(claim_))
                        .values(lease_expires_at=db_now(s) + timedelta(seconds=lease_seconds))
                        .returning(Job.id).execution_options(synchronize_session=False)).first()
    return row is not None


def finish(db_url: str, claim_: Claim, status: str, *, metrics: dict | None = None, error: dict | None = None,
           artifacts: list[dict[str, Any]] | None = None, message: str | None = None) -> bool:
    """End an attempt: succeeded (artifact rows become final here, in the same transaction),
    failed or cancelled. False when the attempt no longer owns the job (lease lost)."""
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now, "lease_expires_at": None}
    if status == "succeeded":
        values.update(progress=1.0, stage="done", metrics=metrics)
    if error is not None:
        values["error"] = error
    with session_scope(db_url) as s:
        row = s.execute(update(Job).where(_owned(claim_)).values(**values).returning(Job.id)
                        .execution_options(synchronize_session=False)).first()
        if row is None:
            return False
        for a in artifacts or []:
            s.add(Artifact(job_id=claim_.job_id, tenant_id=claim_.tenant_id, attempt=claim_.attempt,
                           final=True, created_at=now, **a))
        ev = add_event(s, claim_.job_id, claim_.tenant_id, "status", status=status, attempt=claim_.attempt,
                       message=message or (error or {}).get("message"))
        webhooks.emit_job_status(s, claim_.job_id)
    publish(claim_.job_id, [ev])
    return True


def request_cancel(db_url: str, job_id: str, tenant_id: str) -> str | None:
    """Cancel a queued job at once; flag a running one (its worker stops at the next progress
    point). Returns the status after the request, or None when the job does not exist."""
    now = utcnow()
    with session_scope(db_url) as s:
        done = s.execute(update(Job).where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status == "queued")
                         .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now,
                                 retry_at=None, retry_message_id=None)
                         .returning(Job.wait_reason).execution_options(synchronize_session=False)).first()
        if done:
            # A job waiting in the queue for the hub (jobstore.defer) has run before: say what it was doing.
            ev = add_event(s, job_id, tenant_id, "status", status="cancelled",
                           message="cancelled while waiting to try the Hugging Face hub again" if done[0]
                           else "cancelled before it started")
            webhooks.emit_job_status(s, job_id)
        else:
            flagged = s.execute(update(Job).where(Job.id == job_id, Job.tenant_id == tenant_id,
                                                  Job.status == "running", Job.cancel_requested.is_(False))
                                .values(cancel_requested=True, updated_at=now)
                                .returning(Job.id).execution_options(synchronize_session=False)).first()
            ev = add_event(s, job_id, tenant_id, "status", status="running",
                           message="cancel requested") if flagged else None
        status = s.execute(select(Job.status).where(Job.id == job_id, Job.tenant_id == tenant_id)).scalar()
    if ev:
        publish(job_id, [ev])
    return status


def reap(db_url: str, max_attempts: int, on_reaped=None) -> list[str]:
    """Jobs whose worker stopped renewing its lease: requeue them, or end them after max_attempts
    (or as cancelled when a cancel was requested). Returns the ids to enqueue again.
    `on_reaped(job_id, attempt, status)` is called after commit for each dead attempt (to clean its
    files); `status` is the job's new one (queued again, or failed / cancelled: the job ended).
    Expired by the database's clock (db_now), the one the leases are written on."""
    requeue, events = [], []
    with session_scope(db_url) as s:
        now = db_now(s)
        expired = s.execute(select(Job.id, Job.tenant_id, Job.attempts, Job.cancel_requested, Job.deferrals)
                            .where(Job.status == "running", Job.lease_expires_at < now)).all()
        for job_id, tenant, attempts, cancel, deferrals in expired:
            if cancel:
                values, msg = {"status": "cancelled", "finished_at": now}, "cancelled (its worker had stopped)"
            elif attempts - (deferrals or 0) >= max_attempts:   # (attempts that waited for the hub: not deaths)
                msg = (f"the worker running this job stopped reporting progress (lease expired) on "
                       f"{attempts - (deferrals or 0)} attempts; giving up")
                values = {"status": "failed", "finished_at": now, "error": {"type": "WorkerLost", "message": msg}}
            else:
                values, msg = {"status": "queued", "stage": None}, f"attempt {attempts} lost its worker; requeued"
            values.update(worker_id=None, lease_expires_at=None, updated_at=now)
            ok = s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempts == attempts,
                                             Job.lease_expires_at < now).values(**values).returning(Job.id)
                           .execution_options(synchronize_session=False)).first()
            if not ok:
                continue
            events.append((job_id, add_event(s, job_id, tenant, "status", status=values["status"],
                                             message=msg, attempt=attempts)))
            webhooks.emit_job_status(s, job_id)  # nothing for a requeue (not terminal)
            if values["status"] == "queued":
                requeue.append(job_id)
    for job_id, ev in events:
        publish(job_id, [ev])
        if on_reaped is not None:
            on_reaped(job_id, ev["attempt"], ev["status"])
    return requeue
