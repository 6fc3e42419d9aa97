"""Celery configuration for long (GPU) compression jobs.

The broker message only says "look at job X"; the job row decides whether there is work to do,
so a redelivered or duplicated message is harmless (see api/jobstore.claim).
"""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from celery import Celery

from api.settings import Settings, get_settings

TASK_NAME = "vtrans.run_compression"


def make_celery(settings: Settings) -> Celery:
    app = Celery("vtrans", broker=settings.broker, include=["worker.tasks"])
    visibility = settings.max_job_seconds + 3600
    app.conf.update(
        task_acks_late=True,                 # ack when the job ends, not when it starts...
        task_reject_on_worker_lost=True,     # ...and redeliver when the child was killed (OOM, SIGKILL)
        worker_prefetch_multiplier=1,        # reserve one long job at a time
        worker_concurrency=1,                # one job per worker process
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=_transport_options(settings.broker, visibility),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_ignore_result=True,             # the job row is the record, not a result backend
        task_serializer="json", accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app


def _transport_options(broker: str, visibility: int) -> dict:
    # Redis (and SQS) re-hand an unacked message after visibility_timeout: keep it above the
    # longest job. kombu's SQLAlchemy transport passes options to create_engine, so none there.
    if broker.startswith(("redis", "rediss", "sqs")):
        return {"visibility_timeout": visibility}
    return {}


@lru_cache(maxsize=4)
def _app_for(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def job_queue(settings: Settings, job_id: str) -> str:
    """The queue the job was routed to when it was created (api/routing.py); rows from before
    routing existed have none and go to the default queue."""
    from api.db import session_scope
    from api.models import Job
    from sqlalchemy import select

    with session_scope(settings.db_url) as s:
        queue = s.execute(select(Job.queue).where(Job.id == job_id)).scalar()
    return queue or settings.queue


def send_job(settings: Settings, job_id: str, queue: str | None = None, eta: datetime | None = None,
             countdown: float | None = None, task_id: str | None = None) -> None:
    """`eta`: a job waiting in the queue until then (jobstore.defer). The worker that receives it
    holds it unacknowledged until then without taking a slot (Celery counts eta tasks outside
    the prefetch limit); the visibility timeout, above the longest job, is far above any hub wait.
    `countdown`: the same, counted from now on this machine's clock (what an early delivery
    re-schedules itself with: jobstore.reschedule_early). `task_id`: the message's id (recorded
    on the job row for a deferred job; Celery makes one up otherwise)."""
    _app_for(settings.model_dump_json()).send_task(TASK_NAME, args=[job_id], eta=eta, countdown=countdown,
                                                   task_id=task_id, queue=queue or job_queue(settings, job_id))


# `celery -A worker.celery_app worker` and `vtrans worker` use this instance (env configuration).
app = make_celery(get_settings())
