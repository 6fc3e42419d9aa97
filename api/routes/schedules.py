"""/v1/schedules: recompress a model on a timetable and/or whenever a new version is uploaded.

The logic lives in api/schedules.py (validation, firing) and api/scheduler.py (the process).
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import contract, schedules
from ..automation_schemas import (ScheduleCreate, ScheduleList, ScheduleOut, ScheduleRunList, ScheduleUpdate)
from ..deps import get_db, owned_or_404
from ..models import Schedule, ScheduleRun, new_id, utcnow
from ..problems import field_problem
from ..tenancy import get_tenant

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


def _last_run(db: Session, schedule_id: str) -> ScheduleRun | None:
    return db.scalar(select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id, ScheduleRun.outcome != "missed")
                     .order_by(ScheduleRun.created_at.desc(), ScheduleRun.due_at.desc()).limit(1))


def _out(db: Session, sch: Schedule) -> ScheduleOut:
    return schedules.schedule_out(sch, _last_run(db, sch.id))


def _get(db: Session, tenant: str, schedule_id: str) -> Schedule:
    return owned_or_404(db, Schedule, schedule_id, tenant, "schedule")


@router.post("", status_code=201, response_model=ScheduleOut, operation_id="createSchedule", responses=contract.problems(401, 404, 422))
def create_schedule(body: ScheduleCreate, db: Session = Depends(get_db),
                    tenant: str = Depends(get_tenant)) -> ScheduleOut:
    template, cron = schedules.validate(db, tenant, body.template, body.cron, body.timezone, body.on_new_version)
    now = utcnow()
    sch = Schedule(id=new_id("sch"), tenant_id=tenant, name=body.name, template=template, cron=cron,
                   timezone=body.timezone, on_new_version=body.on_new_version, paused=body.paused,
                   next_due_at=schedules.next_due(cron, body.timezone, now) if cron else None,
                   created_at=now, updated_at=now)
    db.add(sch)
    db.commit()  # committed before answering: a client may act on the 201 at once
    return _out(db, sch)


@router.get("", response_model=ScheduleList, operation_id="listSchedules", responses=contract.problems(401))
def list_schedules(db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> ScheduleList:
    rows = db.scalars(select(Schedule).where(Schedule.tenant_id == tenant)
                      .order_by(Schedule.created_at.desc(), Schedule.id.desc())).all()
    return ScheduleList(data=[_out(db, s) for s in rows])


@router.get("/{schedule_id}", response_model=ScheduleOut, operation_id="getSchedule", responses=contract.problems(401, 404))
def get_schedule(schedule_id: str, db: Session = Depends(get_db),
                 tenant: str = Depends(get_tenant)) -> ScheduleOut:
    return _out(db, _get(db, tenant, schedule_id))


@router.patch("/{schedule_id}", response_model=ScheduleOut, operation_id="updateSchedule", responses=contract.problems(401, 404, 422))
def update_schedule(schedule_id: str, body: ScheduleUpdate, db: Session = Depends(get_db),
                    tenant: str = Depends(get_tenant)) -> ScheduleOut:
    sch = _get(db, tenant, schedule_id)
    sent = body.model_dump(exclude_unset=True)
    merged = {"template": sch.template, "cron": sch.cron, "timezone": sch.timezone,
              "on_new_version": sch.on_new_version}
    merged.update({k: v for k, v in sent.items() if k in merged})
    if merged["timezone"] is None or merged["on_new_version"] is None or merged["template"] is None:
        field = next(k for k in ("timezone", "on_new_version", "template") if merged[k] is None)
        raise field_problem(422, field, "cannot be null")
    template, cron = schedules.validate(db, tenant, merged["template"], merged["cron"], merged["timezone"],
                                        merged["on_new_version"])
    now = utcnow()
    if cron != sch.cron or merged["timezone"] != sch.timezone:
        sch.next_due_at = schedules.next_due(cron, merged["timezone"], now) if cron else None
    sch.template, sch.cron, sch.timezone, sch.on_new_version = template, cron, merged["timezone"], merged["on_new_version"]
    if "name" in sent:
        sch.name = sent["name"]
    if sent.get("paused") is not None:
        sch.paused = sent["paused"]
    sch.updated_at = now
    db.commit()
    return _out(db, sch)


def _set_paused(db: Session, tenant: str, schedule_id: str, paused: bool) -> ScheduleOut:
    sch = _get(db, tenant, schedule_id)
    sch.paused, sch.updated_at = paused, utcnow()
    db.commit()
    return _out(db, sch)


@router.post("/{schedule_id}/pause", response_model=ScheduleOut, operation_id="pauseSchedule", responses=contract.problems(401, 404))
def pause_schedule(schedule_id: str, db: Session = Depends(get_db),
                   tenant: str = Depends(get_tenant)) -> ScheduleOut:
    """While paused, due times are still recorded, as runs skipped with the reason "paused"."""
    return _set_paused(db, tenant, schedule_id, True)


@router.post("/{schedule_id}/resume", response_model=ScheduleOut, operation_id="resumeSchedule", responses=contract.problems(401, 404))
def resume_schedule(schedule_id: str, db: Session = Depends(get_db),
                    tenant: str = Depends(get_tenant)) -> ScheduleOut:
    return _set_paused(db, tenant, schedule_id, False)


@router.delete("/{schedule_id}", status_code=204, operation_id="deleteSchedule", responses=contract.problems(401, 404))
def delete_schedule(schedule_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> Response:
    """Its run history goes with it; jobs it created stay."""
    db.delete(_get(db, tenant, schedule_id))
    db.commit()
    return Response(status_code=204)


@router.get("/{schedule_id}/runs", response_model=ScheduleRunList, operation_id="listScheduleRuns", responses=contract.problems(401, 404))
def list_schedule_runs(schedule_id: str, limit: int = Query(50, ge=1, le=200), before: str | None = Query(
                           None, description="a run id: only runs older than it (pagination)"),
                       db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> ScheduleRunList:
    """Newest first: what each firing did (job created, or skipped with the reason), and the due
    times missed while no scheduler ran."""
    _get(db, tenant, schedule_id)
    q = select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id)
    if before:
        anchor = db.scalar(select(ScheduleRun).where(ScheduleRun.id == before, ScheduleRun.schedule_id == schedule_id))
        if anchor is not None:
            q = q.where(ScheduleRun.due_at < anchor.due_at)
    rows = db.scalars(q.order_by(ScheduleRun.due_at.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    return ScheduleRunList(data=[schedules.run_out(r) for r in page],
                           next_cursor=page[-1].id if len(rows) > limit else None)
