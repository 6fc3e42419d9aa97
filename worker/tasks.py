"""The Celery task and the reaper loop that runs beside it in every worker."""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from api import jobstore, worker_registry
from api.artifacts import ArtifactStore, checkpoint_prefix
from api.settings import get_settings

from .celery_app import TASK_NAME, app, send_job
from .runner import run_job

log = logging.getLogger("vtrans.worker")
_WORKER_TAG = uuid.uuid4().hex[:8]
_stop = threading.Event()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_WORKER_TAG}"


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_compression(self, job_id: str) -> str:
    # The message's id: an early delivery of a deferred job's retry message re-schedules itself (runner).
    return run_job(get_settings(), job_id, worker_id(), delivery_id=self.request.id)


def reap_once() -> list[str]:
    settings = get_settings()
    store = ArtifactStore(settings.artifacts)

    def forget_attempt(job_id: str, attempt: int, status: str) -> None:
        # A worker that died while uploading leaves files no row points at: remove them.
        store.delete_prefix(f"jobs/{job_id}/attempt-{attempt}")
        if status != "queued":   # the job ended (gave up, or cancelled): its checkpoint has no use
            store.delete_prefix(checkpoint_prefix(job_id))

    requeued = jobstore.reap(settings.db_url, settings.max_attempts, on_reaped=forget_attempt)
    for job_id in requeued:  # the rows are committed as queued: now tell a worker
        send_job(settings, job_id)
        log.warning("requeued job %s after its worker stopped renewing the lease", job_id)
    for job_id in _stale_queued(settings):
        send_job(settings, job_id)
        log.warning("job %s was queued for over %.0fs; sent its message again (broker lost it?)",
                    job_id, settings.resend_queued_after_seconds)
    return requeued


def _stale_queued(settings) -> list[str]:
    """Queued jobs untouched for resend_queued_after_seconds; their updated_at is bumped by a
    conditional UPDATE, so only one reaper re-sends each and only once per period. A job waiting
    for the hub (retry_at) counts from its retry time: before it, a message would only be refused.
    The cutoff is on the database's clock, retry_at's: a retry message held by a receiving worker
    whose clock runs behind (Celery fires an eta by the receiver's clock) is re-sent this long
    after retry_at, whichever worker's reaper runs and whatever its clock."""
    from datetime import timedelta

    from sqlalchemy import or_, select, update

    from api.db import db_now, session_scope
    from api.models import Job

    with session_scope(settings.db_url) as s:
        now = db_now(s)
        cutoff = now - timedelta(seconds=settings.resend_queued_after_seconds)
        stale = (Job.status == "queued", Job.updated_at < cutoff, or_(Job.retry_at.is_(None), Job.retry_at < cutoff))
        ids = s.scalars(select(Job.id).where(*stale).limit(100)).all()
        return [job_id for job_id in ids if s.execute(
            update(Job).where(Job.id == job_id, *stale)
            .values(updated_at=now).returning(Job.id).execution_options(synchronize_session=False)).first()]


def _reaper_loop(queues: list[str]) -> None:
    settings = get_settings()
    interval = settings.reaper_interval
    while not _stop.is_set():
        try:  # "this worker is alive and consumes these queues" (api/worker_registry.py)
            worker_registry.beat(settings.db_url, worker_id(), socket.gethostname(), queues)
        except Exception:
            log.exception("worker presence not recorded; retrying in %.0fs", interval)
        try:
            reap_once()
        except Exception:
            log.exception("reaper pass failed; retrying in %.0fs", interval)
        _stop.wait(interval)


def consumed_queues(sender) -> list[str]:
    """The queues this worker consumes (what -Q / --queues selected)."""
    try:
        return sorted(sender.app.amqp.queues.consume_from)
    except Exception:
        return [get_settings().queue]


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    # Runs in the worker's main process (no beat needed): once at start-up, then periodically.
    queues = consumed_queues(sender)
    log.info("worker %s consumes queues %s", worker_id(), ",".join(queues))
    threading.Thread(target=_reaper_loop, args=(queues,), name="vtrans-reaper", daemon=True).start()


@worker_process_init.connect
def _fresh_db_pool(**_kwargs) -> None:
    # A prefork child inherits the parent's pooled connections (the reaper thread opened them):
    # two processes on one socket corrupt each other (psycopg: DuplicatePreparedStatement). Drop
    # them in the child WITHOUT closing, so the parent's connections stay intact (SQLAlchemy's
    # documented recipe for multiprocessing).
    from api.db import get_engine

    get_engine(get_settings().db_url).dispose(close=False)


@worker_shutdown.connect
def _stop_reaper(**_kwargs) -> None:
    _stop.set()
    try:
        worker_registry.forget(get_settings().db_url, worker_id())
    except Exception:  # the row goes stale on its own
        log.warning("could not remove this worker's presence row")
