"""`vtrans scheduler`: the long-running process that fires schedules and delivers webhooks.

Why a process of our own rather than Celery beat: beat keeps its schedule in one process's
memory or file and must run exactly once in a deployment; our schedules live in the database,
are created by tenants at run time, and any number of `vtrans scheduler` processes may run
(for availability) because each firing is claimed in the database — a conditional UPDATE of
the schedule's next_due_at, backed by the unique (schedule_id, due_at) key of schedule_runs.

The clock is injectable (`clock=`; `--now` / `--clock-file` on the command line), so tests can
walk a schedule through days of due times in seconds.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from . import jobstore, schedules, webhook_delivery
from .db import session_scope
from .job_requests import latest_version
from .models import Model, Schedule, ScheduleRun, utcnow
from .settings import Settings

log = logging.getLogger("vtrans.scheduler")
Clock = Callable[[], datetime]
Enqueue = Callable[[str], None]


def file_clock(path: Path) -> Clock:
    """A clock that reads an ISO time from a file on every call (tests move time by writing it)."""
    def now() -> datetime:
        return datetime.fromisoformat(path.read_text(encoding="utf-8").strip())
    return now


def _after_commit(fired: schedules.Fired, enqueue: Enqueue) -> None:
    if fired.job_id is None:
        return
    jobstore.publish(fired.job_id, fired.job_events)
    try:
        enqueue(fired.job_id)
    except Exception:
        # The job row is committed as queued: the worker's reaper re-sends stale queued jobs.
        log.exception("job %s (schedule %s) could not be sent to the queue yet", fired.job_id, fired.run.schedule_id)


def fire_due(settings: Settings, enqueue: Enqueue, now: datetime, online: bool = True) -> list[schedules.Fired]:
    """Fire every schedule whose cron due time has come, once; after downtime, once for the
    latest due time, recording the earlier ones as missed."""
    with session_scope(settings.db_url) as s:
        due = s.execute(select(Schedule.id, Schedule.next_due_at).where(Schedule.next_due_at <= now)
                        .order_by(Schedule.next_due_at).limit(500)).all()
    out = []
    for schedule_id, first_due in due:
        try:
            fired = _fire_cron(settings, schedule_id, first_due, now, online)
        except IntegrityError:
            fired = None  # another scheduler recorded this firing first
        except Exception:
            log.exception("schedule %s: firing failed; it will be retried on the next pass", schedule_id)
            continue
        if fired is not None:
            _after_commit(fired, enqueue)
            out.append(fired)
    return out


def _fire_cron(settings: Settings, schedule_id: str, first_due: datetime, now: datetime,
               online: bool) -> schedules.Fired | None:
    with session_scope(settings.db_url) as s:
        sch = s.get(Schedule, schedule_id)
        if sch is None or sch.cron is None:
            return None
        times = schedules.due_times(sch.cron, sch.timezone, first_due, now)
        following = schedules.next_due(sch.cron, sch.timezone, times[-1])
        # The claim: only the process whose UPDATE still sees the due time it read moves it on
        # (a racing one waits for our commit, then matches no row).
        claimed = s.execute(update(Schedule).where(Schedule.id == schedule_id, Schedule.next_due_at == first_due)
                            .values(next_due_at=following).returning(Schedule.id)
                            .execution_options(synchronize_session=False)).first()
        if claimed is None:
            return None
        missed = times[:-1]
        return schedules.fire(s, settings, sch, times[-1], "cron", missed=missed, missed_total=len(missed),
                              online=online)


def fire_new_version(settings: Settings, enqueue: Enqueue, tenant: str, name: str, model_id: str,
                     online: bool = False) -> list[schedules.Fired]:
    """Fire the tenant's on_new_version schedules whose template names `name`, for the version
    `model_id`. Its due time is the version's upload time, so this firing is unique too."""
    out = []
    with session_scope(settings.db_url) as s:
        watching = s.scalars(select(Schedule).where(Schedule.tenant_id == tenant, Schedule.on_new_version.is_(True)))
        ids = [sch.id for sch in watching if (sch.template or {}).get("model") == name]
    for schedule_id in ids:
        try:
            with session_scope(settings.db_url) as s:
                sch, model = s.get(Schedule, schedule_id), s.get(Model, model_id)
                if sch is None or model is None or model.created_at <= sch.created_at:
                    continue
                fired = schedules.fire(s, settings, sch, model.created_at, "new_version", online=online)
        except IntegrityError:
            continue  # this version already fired this schedule
        _after_commit(fired, enqueue)
        out.append(fired)
    return out


def scan_new_versions(settings: Settings, enqueue: Enqueue) -> list[schedules.Fired]:
    """The durable path for on_new_version: a latest version with no firing yet (its upload
    request died before firing) fires now. Only the latest: several versions uploaded while
    nothing fired make one run, on the newest."""
    out = []
    with session_scope(settings.db_url) as s:
        pending = []
        for sch in s.scalars(select(Schedule).where(Schedule.on_new_version.is_(True))):
            name = (sch.template or {}).get("model")
            latest = latest_version(s, sch.tenant_id, name) if name else None
            if latest is None or latest.created_at <= sch.created_at:
                continue
            seen = s.scalar(select(ScheduleRun.id).where(ScheduleRun.schedule_id == sch.id,
                                                         ScheduleRun.due_at == latest.created_at))
            if seen is None:
                pending.append((sch.tenant_id, name, latest.id))
    for tenant, name, model_id in pending:
        out.extend(fire_new_version(settings, enqueue, tenant, name, model_id))
    return out


def tick(settings: Settings, enqueue: Enqueue, clock: Clock = utcnow, online: bool = True) -> list[schedules.Fired]:
    return fire_due(settings, enqueue, clock(), online) + scan_new_versions(settings, enqueue)


def celery_enqueue(settings: Settings) -> Enqueue:
    def enqueue(job_id: str) -> None:
        from worker.celery_app import send_job

        send_job(settings, job_id)
    return enqueue


def _loop(stop: threading.Event, interval: float, what: str, step: Callable[[], object]) -> None:
    while not stop.is_set():
        try:
            step()
        except Exception:
            log.exception("%s pass failed; retrying in %.0fs", what, interval)
        stop.wait(interval)


def _warm_up() -> None:
    # Import the validation code (torch, transformers) before the first firing: a firing holds
    # its schedule's row lock, and a first import can take a minute on a busy machine.
    from . import core_bridge

    core_bridge.builtin_datasets()
    tiny_bert = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "hidden_size": 32,
                 "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 64}
    for config in (None, tiny_bert):
        try:
            core_bridge.validate_job(config, {"kind": "flops", "target": 0.5}, "vtrans", None)
        except Exception:
            pass


def run(settings: Settings, clock: Clock = utcnow, once: bool = False, stop: threading.Event | None = None) -> None:
    """The `vtrans scheduler` process: schedules every scheduler_interval_seconds, the webhook
    outbox every webhook_poll_seconds (in a thread), until `stop` is set (SIGTERM/SIGINT)."""
    enqueue = celery_enqueue(settings)
    _warm_up()
    if once:
        fired = tick(settings, enqueue, clock)
        webhook_delivery.deliver_due(settings)
        log.info("scheduler: one pass, %d firing(s)", len(fired))
        return
    stop = stop or threading.Event()
    sender = threading.Thread(target=_loop, name="vtrans-webhooks", daemon=True,
                              args=(stop, settings.webhook_poll_seconds, "webhook delivery",
                                    lambda: webhook_delivery.deliver_due(settings)))
    sender.start()
    log.info("scheduler: running (schedules every %.1fs, webhooks every %.1fs)",
             settings.scheduler_interval_seconds, settings.webhook_poll_seconds)
    _loop(stop, settings.scheduler_interval_seconds, "schedule", lambda: tick(settings, enqueue, clock))
    sender.join(timeout=settings.webhook_timeout_seconds + 5)
