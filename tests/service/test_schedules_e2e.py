"""Schedules with real processes (issue #14): two `vtrans scheduler` processes racing on Postgres
create one job per firing; a new version upload runs a job on a real Celery worker and the
webhook receiver gets job.succeeded with a valid Standard Webhooks signature."""
from __future__ import annotations

import secrets
from collections import Counter
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update

from .automation import Clock, Tenant, hook_settings, receiver, start_scheduler, tenants  # noqa: F401
from .conftest import settings_env, tar_gz_of, wait_for
from .jobpath import BUDGET, FAST_OPTIONS, wait_job

UTC = timezone.utc
SCHEDULES = 12


def _rows(settings, tenant: str):
    from api.db import session_scope
    from api.models import Job, ScheduleRun

    with session_scope(settings.db_url) as s:
        runs = s.execute(select(ScheduleRun.schedule_id, ScheduleRun.due_at, ScheduleRun.outcome, ScheduleRun.job_id)
                         .where(ScheduleRun.tenant_id == tenant)).all()
        jobs = s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant))
    return runs, jobs


def test_two_racing_schedulers_create_one_job_per_firing(tmp_path, tenants, hook_settings, start_scheduler,
                                                         tiny_model_dir):
    from api.db import session_scope
    from api.models import Job

    t = tenants()
    name = f"bert-{secrets.token_hex(3)}"
    assert t.http.post("/v1/models", data={"name": name}, files={
        "file": ("m.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")}).status_code == 201
    template = {"model": name, "dataset": "tweet-sentiment", "budget": BUDGET, "options": FAST_OPTIONS}
    made = [t.http.post("/v1/schedules", json={"template": template, "cron": "* * * * *"}).json()
            for _ in range(SCHEDULES)]
    # All due at the same minute (creation may have straddled a minute boundary).
    first = max(datetime.fromisoformat(s["next_due_at"]) for s in made)
    from api.models import Schedule

    with session_scope(hook_settings.db_url) as s:
        s.execute(update(Schedule).where(Schedule.tenant_id == t.name).values(next_due_at=first))
    clock = Clock(tmp_path / "clock", first - timedelta(seconds=30))
    procs = [start_scheduler(f"scheduler-{i}", clock=clock) for i in range(2)]

    def firings_at(due: datetime) -> int:
        runs, _ = _rows(hook_settings, t.name)
        return sum(1 for r in runs if r.due_at == due)

    for minute in range(3):
        due = first + timedelta(minutes=minute)
        clock.set(due + timedelta(seconds=1))
        try:
            wait_for(lambda: firings_at(due) >= SCHEDULES, 90, what=f"firings due {due}")
        except AssertionError as exc:
            with session_scope(hook_settings.db_url) as s:
                from sqlalchemy import text
                state = s.execute(text("select pid, state, wait_event_type, wait_event, left(query, 100) "
                                       "from pg_stat_activity where datname = current_database()")).all()
            raise AssertionError(f"{exc}\n{state}\n{clock.path.read_text()}\n{_rows(hook_settings, t.name)}\n"
                                 + "\n".join(p.output()[-3000:] for p in procs)) from None
        if minute == 1:
            # Let the next firing create jobs again (the previous ones would otherwise be "still active").
            with session_scope(hook_settings.db_url) as s:
                s.execute(update(Job).where(Job.tenant_id == t.name).values(status="cancelled"))
    runs, jobs = _rows(hook_settings, t.name)
    per_firing = Counter((r.schedule_id, r.due_at) for r in runs)
    assert set(per_firing.values()) == {1} and len(per_firing) == 3 * SCHEDULES
    outcomes = Counter(r.outcome for r in runs)
    assert outcomes == {"job_created": 2 * SCHEDULES, "skipped": SCHEDULES}
    created = [r.job_id for r in runs if r.outcome == "job_created"]
    assert len(set(created)) == len(created) == jobs  # one job per firing, no stray job
    for p in procs:
        assert p.p.poll() is None, p.output()
        assert "Traceback" not in p.output(), p.output()


def test_new_version_upload_runs_a_job_and_the_receiver_gets_a_signed_job_succeeded(
        hook_settings, start_proc, receiver, start_scheduler, tiny_model_dir, tiny_dataset_csv):
    import sys

    from standardwebhooks.webhooks import Webhook

    from api.scheduler import celery_enqueue

    # The production worker command; a lease long enough that a loaded 2-core machine does not
    # make the reaper take the job away from a live worker (that is tested elsewhere).
    worker_settings = hook_settings.model_copy(update={"lease_seconds": 600})
    celery_worker = start_proc([sys.executable, "-m", "api.cli", "worker"], settings_env(worker_settings), "worker")
    wait_for(lambda: "ready." in celery_worker.output() or celery_worker.p.poll() is not None, 300, what="worker")
    assert celery_worker.p.poll() is None, celery_worker.output()
    t = Tenant(hook_settings, enqueue=celery_enqueue(hook_settings))
    try:
        name = f"bert-{secrets.token_hex(3)}"
        archive = tar_gz_of(tiny_model_dir)
        t.http.post("/v1/models", data={"name": name}, files={"file": ("m.tar.gz", archive, "application/gzip")})
        ds = t.http.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")}).json()
        hook = t.http.post("/v1/webhooks", json={"url": receiver.url,
                                                 "events": ["job.succeeded", "job.failed", "schedule.run"]}).json()
        sch = t.http.post("/v1/schedules", json={
            "template": {"model": name, "dataset": ds["id"], "budget": BUDGET, "options": FAST_OPTIONS},
            "on_new_version": True}).json()
        start_scheduler()
        v2 = t.http.post("/v1/models", data={"name": name},
                         files={"file": ("m.tar.gz", archive, "application/gzip")}).json()
        assert v2["version"] == 2
        (run,) = t.http.get(f"/v1/schedules/{sch['id']}/runs").json()["data"]
        assert run["outcome"] == "job_created"
        job = wait_job(t.http, run["job_id"], 600, log=celery_worker.output)
        assert job["status"] == "succeeded", (job["error"], celery_worker.output()[-3000:])
        assert job["request"]["model_source"] == {"ref": name, "name": name, "version": 2, "revision": None}
        receiver.wait_for(2, 60)
        verifier = Webhook(hook["secret"])
        events = {}
        for headers, body in receiver.received:
            payload = verifier.verify(body, headers)  # raises unless the signature is valid
            events[payload["type"]] = payload["data"]
        assert events["schedule.run"]["job_id"] == run["job_id"]
        assert events["schedule.run"]["schedule_id"] == sch["id"]
        assert events["job.succeeded"]["id"] == run["job_id"]
        assert events["job.succeeded"]["model_source"]["version"] == 2
        assert events["job.succeeded"]["metrics"]["flops_fraction"] <= 0.6 + 1e-6
    finally:
        t.close()
