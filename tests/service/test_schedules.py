"""Schedules (issue #14) against real Postgres: validation (422 naming the field), tenancy, and
what firings do, driven by the scheduler's own tick with an injected clock (days of due times
in seconds, no sleeping). The multi-process and end-to-end cases are in test_schedules_e2e.py."""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from .automation import Tenant, hook_settings, tenants  # noqa: F401
from .conftest import Recorder, assert_problem, tar_gz_of
from .jobpath import BUDGET, FAST_OPTIONS

UTC = timezone.utc


def upload(t: Tenant, model_dir, name: str) -> dict:
    r = t.http.post("/v1/models", data={"name": name},
                    files={"file": ("m.tar.gz", tar_gz_of(model_dir), "application/gzip")})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def named(tenants, tiny_model_dir):
    """A tenant with version 1 of a named model: (tenant, name, template)."""
    t = tenants()
    name = f"bert-{secrets.token_hex(3)}"
    upload(t, tiny_model_dir, name)
    return t, name, {"model": name, "dataset": "tweet-sentiment", "budget": BUDGET, "options": FAST_OPTIONS}


def create(t: Tenant, **body) -> dict:
    r = t.http.post("/v1/schedules", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def runs(t: Tenant, schedule_id: str) -> list[dict]:
    r = t.http.get(f"/v1/schedules/{schedule_id}/runs", params={"limit": 200})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def tick(settings, at: datetime, enqueue=None):
    from api import scheduler

    return scheduler.tick(settings, enqueue if enqueue is not None else Recorder(), clock=lambda: at, online=False)


def set_job_status(settings, job_id: str, status: str) -> None:
    from api.db import session_scope
    from api.models import Job

    with session_scope(settings.db_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status))


def test_next_due_follows_the_time_zone_across_daylight_saving():
    from api.schedules import next_due

    # 03:00 Berlin on Mondays: 02:00 UTC in winter (CET), 01:00 UTC in summer (CEST).
    assert next_due("0 3 * * 1", "Europe/Berlin", datetime(2026, 3, 20, tzinfo=UTC)) == datetime(2026, 3, 23, 2, tzinfo=UTC)
    assert next_due("0 3 * * 1", "Europe/Berlin", datetime(2026, 3, 25, tzinfo=UTC)) == datetime(2026, 3, 30, 1, tzinfo=UTC)
    assert next_due("*/15 * * * *", "UTC", datetime(2026, 1, 1, 0, 15, tzinfo=UTC)) == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize("change,field", [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "every monday"}, "cron"),
    ({"cron": "0 3 * * 1 2026"}, "cron"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"timezone": "../etc/passwd"}, "timezone"),
    ({"cron": None, "on_new_version": False}, "cron"),
    ({"template": {"dataset": "tweet-sentiment", "budget": BUDGET}}, "template.model"),
    ({"template": {"model": "{name}", "dataset": "tweet-sentiment", "budget": {"kind": "flops", "target": 1.5}}},
     "template.budget.target"),
    ({"template": {"model": "{name}", "dataset": "no-such-task", "budget": BUDGET}}, "template.dataset"),
    ({"template": {"model": "{name}", "dataset": "tweet-sentiment", "budget": BUDGET, "colour": 1}}, "template.colour"),
    ({"template": {"model": "{name}", "dataset": "tweet-sentiment", "budget": BUDGET, "method": "magic"}},
     "template.method"),
    ({"template": {"model": "prajjwal1/bert-tiny", "dataset": "tweet-sentiment", "budget": BUDGET},
      "on_new_version": True}, "template.model"),
    ({"template": {"model": "{name}@1", "dataset": "tweet-sentiment", "budget": BUDGET}, "on_new_version": True},
     "template.model"),
    ({"on_new_version": "sometimes"}, "on_new_version"),
])
def test_bad_schedules_are_refused_naming_the_field(named, change, field):
    t, name, template = named
    body = {"template": template, "cron": "0 3 * * 1", "timezone": "Europe/Berlin", **change}
    if isinstance(body["template"], dict) and body["template"].get("model", "").startswith("{name}"):
        body["template"] = dict(body["template"], model=body["template"]["model"].replace("{name}", name))
    assert_problem(t.http.post("/v1/schedules", json=body), 422, field)
    assert t.http.get("/v1/schedules").json()["data"] == []


def test_unknown_model_in_template_is_404_naming_the_field(named):
    t, name, template = named
    r = t.http.post("/v1/schedules", json={"template": dict(template, model=f"{name}-nope"), "cron": "0 3 * * *"})
    assert_problem(r, 404, "template.model")


def test_crud_pause_resume_and_other_tenants_get_404(named, tenants):
    t, name, template = named
    sch = create(t, name="weekly", template=template, cron="0 3 * * 1", timezone="Europe/Berlin", on_new_version=True)
    assert sch["id"].startswith("sch_") and sch["paused"] is False and sch["last_run"] is None
    due = datetime.fromisoformat(sch["next_due_at"])
    assert due > datetime.now(UTC) and due.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).hour == 3
    assert t.http.post(f"/v1/schedules/{sch['id']}/pause").json()["paused"] is True
    assert t.http.post(f"/v1/schedules/{sch['id']}/resume").json()["paused"] is False
    patched = t.http.patch(f"/v1/schedules/{sch['id']}", json={"cron": "30 4 * * *", "timezone": "UTC"}).json()
    assert patched["cron"] == "30 4 * * *" and datetime.fromisoformat(patched["next_due_at"]).hour == 4
    assert_problem(t.http.patch(f"/v1/schedules/{sch['id']}", json={"timezone": "Nowhere/Land"}), 422, "timezone")
    assert_problem(t.http.patch(f"/v1/schedules/{sch['id']}", json={"cron": None, "on_new_version": False}), 422, "cron")
    cron_removed = t.http.patch(f"/v1/schedules/{sch['id']}", json={"cron": None}).json()
    assert cron_removed["cron"] is None and cron_removed["next_due_at"] is None
    other = tenants()
    for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/pause"), ("POST", "/resume"),
                         ("GET", "/runs")):
        kw = {"json": {"paused": True}} if method == "PATCH" else {}
        assert_problem(other.http.request(method, f"/v1/schedules/{sch['id']}{path}", **kw), 404)
    assert other.http.get("/v1/schedules").json()["data"] == []
    assert [s["id"] for s in t.http.get("/v1/schedules").json()["data"]] == [sch["id"]]
    assert t.http.delete(f"/v1/schedules/{sch['id']}").status_code == 204
    assert_problem(t.http.get(f"/v1/schedules/{sch['id']}"), 404)


def test_cron_fires_once_per_due_time_with_an_injected_clock(named, hook_settings, tiny_model_dir):
    t, name, template = named
    sch = create(t, template=template, cron="0 3 * * 1", timezone="Europe/Berlin")
    due = datetime.fromisoformat(sch["next_due_at"])
    sent = Recorder()
    tick(hook_settings, due - timedelta(seconds=1), sent)
    assert runs(t, sch["id"]) == [] and sent == []
    tick(hook_settings, due + timedelta(seconds=5), sent)
    tick(hook_settings, due + timedelta(seconds=6), sent)   # the same due time again: nothing new
    (run,) = runs(t, sch["id"])
    assert run["outcome"] == "job_created" and run["trigger"] == "cron" and run["missed"] == 0
    assert datetime.fromisoformat(run["due_at"]) == due and sent == [run["job_id"]]
    job = t.http.get(f"/v1/jobs/{run['job_id']}").json()
    assert job["status"] == "queued" and job["request"]["model_source"]["version"] == 1
    week = due + timedelta(days=7)
    assert datetime.fromisoformat(t.http.get(f"/v1/schedules/{sch['id']}").json()["next_due_at"]) == week

    # Next Monday the first job is still queued: skipped, with the reason.
    tick(hook_settings, week + timedelta(seconds=1), sent)
    assert runs(t, sch["id"])[0]["reason"] == "a previous run is still active" and len(sent) == 1
    # It succeeded; the Monday after, the source is the same version: skipped.
    set_job_status(hook_settings, run["job_id"], "succeeded")
    tick(hook_settings, week + timedelta(days=7, seconds=1), sent)
    latest = runs(t, sch["id"])[0]
    assert latest["outcome"] == "skipped" and latest["reason"] == "source unchanged since the last successful run"
    # A new version: the next firing builds it.
    v2 = upload(t, tiny_model_dir, name)
    tick(hook_settings, week + timedelta(days=14, seconds=1), sent)
    latest = runs(t, sch["id"])[0]
    assert latest["outcome"] == "job_created" and latest["source"] == v2["id"] and len(sent) == 2
    assert t.http.get(f"/v1/schedules/{sch['id']}").json()["last_run"]["id"] == latest["id"]


def test_after_downtime_fires_once_and_records_the_missed_due_times(named, hook_settings):
    t, name, template = named
    sch = create(t, template=template, cron="*/10 * * * *")
    first = datetime.fromisoformat(sch["next_due_at"])
    sent = Recorder()
    tick(hook_settings, first + timedelta(minutes=65), sent)  # due times first, +10, ..., +60: 7 of them
    rows = runs(t, sch["id"])
    fired = [r for r in rows if r["outcome"] != "missed"]
    missed = [r for r in rows if r["outcome"] == "missed"]
    assert len(fired) == 1 and fired[0]["outcome"] == "job_created" and len(sent) == 1
    assert datetime.fromisoformat(fired[0]["due_at"]) == first + timedelta(minutes=60) and fired[0]["missed"] == 6
    assert sorted(datetime.fromisoformat(r["due_at"]) for r in missed) == [first + timedelta(minutes=10 * i)
                                                                          for i in range(6)]
    assert all("missed while no scheduler was running" in r["reason"] for r in missed)
    assert datetime.fromisoformat(t.http.get(f"/v1/schedules/{sch['id']}").json()["next_due_at"]) == \
        first + timedelta(minutes=70)


def test_paused_and_over_quota_firings_are_skipped_with_the_reason(named, hook_settings):
    t, name, template = named
    paused = create(t, template=template, cron="0 * * * *", paused=True)
    due = datetime.fromisoformat(paused["next_due_at"])
    tick(hook_settings, due + timedelta(seconds=1))
    assert [(r["outcome"], r["reason"]) for r in runs(t, paused["id"])] == [("skipped", "paused")]
    t.http.delete(f"/v1/schedules/{paused['id']}")
    limited = hook_settings.model_copy(update={"tenant_limits": {t.name: {"max_active_jobs": 0}}})
    sch = create(t, template=template, cron="0 * * * *")
    tick(limited, datetime.fromisoformat(sch["next_due_at"]) + timedelta(seconds=1))
    (run,) = runs(t, sch["id"])
    assert run["outcome"] == "skipped" and run["reason"].startswith("quota") and run["job_id"] is None


def test_new_version_fires_on_upload_and_a_missed_one_is_caught_by_the_scan(named, hook_settings, tiny_model_dir):
    from api.db import session_scope
    from api.models import Model, new_id

    t, name, template = named
    sch = create(t, template=template, on_new_version=True)
    assert sch["next_due_at"] is None
    v2 = upload(t, tiny_model_dir, name)
    (run,) = runs(t, sch["id"])  # fired inside the upload request: there already
    assert run["trigger"] == "new_version" and run["outcome"] == "job_created" and run["source"] == v2["id"]
    assert t.enqueued == [run["job_id"]]
    assert t.http.get(f"/v1/jobs/{run['job_id']}").json()["request"]["model_source"]["version"] == 2
    set_job_status(hook_settings, run["job_id"], "succeeded")
    # A version whose upload request died before firing (row written, nothing fired):
    with session_scope(hook_settings.db_url) as s:
        v1 = s.get(Model, v2["id"])
        s.add(Model(id=new_id("mdl"), tenant_id=t.name, filename="m.tar.gz", storage_key=v1.storage_key,
                    model_type=v1.model_type, architectures=v1.architectures, config=v1.config, files=v1.files,
                    size_bytes=v1.size_bytes, name=name, version=3))
    sent = Recorder()
    tick(hook_settings, datetime.now(UTC), sent)
    tick(hook_settings, datetime.now(UTC), sent)  # the scan does not fire the same version twice
    latest = runs(t, sch["id"])
    assert len(latest) == 2 and latest[0]["outcome"] == "job_created" and len(sent) == 1
    assert t.http.get(f"/v1/jobs/{latest[0]['job_id']}").json()["request"]["model_source"]["version"] == 3


def test_metrics_report_schedule_firings_skips_and_webhook_outbox(named, hook_settings):
    t, name, template = named
    sch = create(t, template=template, cron="0 * * * *", paused=True)
    tick(hook_settings, datetime.fromisoformat(sch["next_due_at"]) + timedelta(seconds=1))
    text = t.http.get("/metrics").text
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith(("vtrans_schedule", "vtrans_webhook"))}
    assert lines['vtrans_schedule_runs_total{outcome="skipped",trigger="cron"}'] >= 1  # labels sorted
    assert lines['vtrans_schedules{state="paused"}'] >= 1
    assert "vtrans_schedule_lag_seconds" in lines and 'vtrans_webhook_messages{status="pending"}' in lines
