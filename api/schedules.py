"""Schedules (issue #14): validation, cron arithmetic, and what one firing does.

A firing is one transaction: its schedule_runs row (unique per (schedule, due time): a second
scheduler process racing for the same firing fails on that INSERT and rolls everything back),
then either a queued job or the reason it was skipped, and the `schedule.run` webhook message.
The job is sent to the broker only after commit (the row must exist before a worker hears of it).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import job_requests, limits, routing, webhooks
from .automation_schemas import ScheduleOut, ScheduleRunOut
from .models import Job, Schedule, ScheduleRun, new_id, utcnow
from .problems import Problem, field_problem
from .settings import Settings

ACTIVE = ("queued", "running")
SKIP_PAUSED = "paused"
SKIP_ACTIVE = "a previous run is still active"
SKIP_UNCHANGED = "source unchanged since the last successful run"
MAX_MISSED_ROWS = 50          # missed due times recorded one by one after downtime; the rest are counted
MAX_CATCH_UP_STEPS = 100_000  # bound on walking a cron expression over a long downtime


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise field_problem(422, "timezone", f"{name!r} is not an IANA time zone name (like 'Europe/Berlin' "
                            "or 'UTC')") from None


def check_cron(expr: str) -> str:
    expr = " ".join(expr.split())
    if len(expr.split(" ")) != 5 or not croniter.is_valid(expr):
        raise field_problem(422, "cron", f"{expr!r} is not a 5-field cron expression "
                            "(minute hour day-of-month month day-of-week, e.g. '0 3 * * 1')")
    return expr


def next_due(cron: str, tz_name: str, after: datetime) -> datetime:
    """The first due time strictly after `after`, computed in the schedule's time zone (so
    '0 3 * * *' stays 03:00 local across daylight-saving changes), returned in UTC."""
    tz = ZoneInfo(tz_name)
    it = croniter(cron, after.astimezone(tz))
    return it.get_next(datetime).astimezone(ZoneInfo("UTC"))


def due_times(cron: str, tz_name: str, first: datetime, now: datetime) -> list[datetime]:
    """Every due time from `first` (itself due) up to `now`, oldest first (bounded)."""
    out = [first]
    while len(out) < MAX_CATCH_UP_STEPS:
        nxt = next_due(cron, tz_name, out[-1])
        if nxt > now:
            break
        out.append(nxt)
    return out


def validate(db: Session, tenant: str, template: Any, cron: str | None, tz_name: str,
             on_new_version: bool) -> tuple[dict, str | None]:
    """422/404 naming the field, or (the template to store, the normalised cron)."""
    check_timezone(tz_name)
    cron = check_cron(cron) if cron is not None else None
    if cron is None and not on_new_version:
        raise field_problem(422, "cron", "a schedule needs a trigger: a cron expression, on_new_version: true, "
                            "or both")
    body = job_requests.parse_template(template)
    prepared = job_requests.prepare(db, tenant, body, prefix="template.")
    pinned = prepared.model.name is None or body.model != prepared.model.name  # an id, a hub ID, name@version
    if on_new_version and pinned:
        raise field_problem(422, "template.model", "on_new_version watches uploads under a model name: use the "
                            "name alone (not an id, a hub ID or name@version); a cron schedule on a hub ID runs "
                            "only when the hub revision changed")
    return body.model_dump(mode="json"), cron


@dataclass
class Fired:
    run: ScheduleRun
    job_id: str | None
    job_events: list[dict]


def _last_succeeded_source(db: Session, schedule_id: str) -> str | None:
    return db.scalar(select(ScheduleRun.source).join(Job, Job.id == ScheduleRun.job_id)
                     .where(ScheduleRun.schedule_id == schedule_id, Job.status == "succeeded")
                     .order_by(ScheduleRun.created_at.desc()).limit(1))


def _previous_active(db: Session, schedule_id: str) -> bool:
    return db.scalar(select(Job.id).join(ScheduleRun, ScheduleRun.job_id == Job.id)
                     .where(ScheduleRun.schedule_id == schedule_id, Job.status.in_(ACTIVE)).limit(1)) is not None


def fire(db: Session, settings: Settings, sch: Schedule, due_at: datetime, trigger: str,
         missed: list[datetime] | None = None, missed_total: int = 0, online: bool = True) -> Fired:
    """Record one firing of `sch` in the caller's transaction (which it flushes; the caller
    commits, then enqueues Fired.job_id). Raises IntegrityError if this firing already exists."""
    now = utcnow()
    run = ScheduleRun(id=new_id("run"), schedule_id=sch.id, tenant_id=sch.tenant_id, due_at=due_at, trigger=trigger,
                      outcome="skipped", missed=missed_total, created_at=now)
    db.add(run)
    db.flush()  # claims the firing: a racing scheduler blocks here, then fails on the unique key
    for when in (missed or [])[:MAX_MISSED_ROWS]:
        db.add(ScheduleRun(id=new_id("run"), schedule_id=sch.id, tenant_id=sch.tenant_id, due_at=when, trigger=trigger,
                           outcome="missed", created_at=now,
                           reason=f"missed while no scheduler was running; folded into the firing due "
                                  f"{due_at.isoformat()}"))
    job_id, events = None, []
    run.reason, prepared = _skip_reason(db, settings, sch, run, online)
    if prepared is not None:
        job, ev = job_requests.insert_job(db, sch.tenant_id, prepared,
                                          message=f"created by schedule {sch.id} ({trigger} firing)",
                                          queue=routing.queue_for(settings, sch.tenant_id, prepared))
        run.outcome, run.job_id, run.source = "job_created", job.id, prepared.model.source
        job_id, events = job.id, [ev]
    db.flush()
    webhooks.emit(db, sch.tenant_id, "schedule.run", {"schedule_id": sch.id, **run_out(run).model_dump(mode="json")})
    return Fired(run, job_id, events)


def _skip_reason(db: Session, settings: Settings, sch: Schedule, run: ScheduleRun,
                 online: bool) -> tuple[str | None, job_requests.PreparedJob | None]:
    """(why this firing creates no job, None) or (None, the validated job to create)."""
    if sch.paused:
        return SKIP_PAUSED, None
    if _previous_active(db, sch.id):
        return SKIP_ACTIVE, None
    try:
        prepared = job_requests.prepare(db, sch.tenant_id, job_requests.parse_template(sch.template),
                                        prefix="template.", online=online)
    except Problem as p:  # e.g. the dataset was deleted since the schedule was made
        return f"the template no longer validates: {p.detail}", None
    model = prepared.model
    run.source = model.source
    # A hub ID whose revision cannot be learned (hub unreachable, never cached) is not known to
    # be unchanged: it runs.
    known = model.revision is not None or model.target.startswith("mdl_")
    if known and _last_succeeded_source(db, sch.id) == model.source:
        return SKIP_UNCHANGED, None
    try:
        limits.check_active_jobs(db, settings, sch.tenant_id)
    except Problem as p:
        return f"quota: {p.detail}", None
    return None, prepared


def run_out(r: ScheduleRun) -> ScheduleRunOut:
    """The one serializer of a firing: the API's runs and the `schedule.run` webhook's data."""
    return ScheduleRunOut(id=r.id, schedule_id=r.schedule_id, due_at=r.due_at, trigger=r.trigger,
                          outcome=r.outcome, reason=r.reason, job_id=r.job_id, source=r.source, missed=r.missed,
                          created_at=r.created_at)


def schedule_out(s: Schedule, last_run: ScheduleRun | None = None) -> ScheduleOut:
    return ScheduleOut(id=s.id, name=s.name, template=s.template, cron=s.cron, timezone=s.timezone,
                       on_new_version=s.on_new_version, paused=s.paused,
                       next_due_at=s.next_due_at, created_at=s.created_at, updated_at=s.updated_at,
                       last_run=run_out(last_run) if last_run else None)
