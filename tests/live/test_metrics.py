"""GET /metrics after jobs: every figure is checked against the database it is read from."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from api.db import session_scope
from api.models import JOB_STATUSES, Job, JobEvent

from .conftest import SSE, FakeRun


def _scrape(server) -> dict[str, list]:
    r = server.client().get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f.samples for f in text_string_to_metric_families(r.text)}
    return families


def _value(samples, name, **labels):
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def test_metrics_after_jobs(live_api):
    url = live_api.settings.db_url
    done = FakeRun(live_api.settings, method="faster").start()
    for _ in range(4):
        done.progress(loss=0.3)
    done.finish("succeeded")
    busy = FakeRun(live_api.settings, method="vtrans", worker="metrics-worker-7").start()
    busy.progress()
    FakeRun(live_api.settings)  # stays queued
    with SSE(live_api, done.job_id) as sse:  # one streamed request, to see it in the latency histogram
        assert list(sse)[-1]["event"] == "end"

    m = _scrape(live_api)
    with session_scope(url) as s:
        by_status = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        events = dict(s.execute(select(JobEvent.kind, func.count()).group_by(JobEvent.kind)).all())
        finished_faster = [j for j in s.scalars(select(Job).where(Job.finished_at.is_not(None),
                                                                  Job.started_at.is_not(None)))
                           if j.request.get("method") == "faster"]

    assert _value(m["vtrans_metrics_db_up"], "vtrans_metrics_db_up") == 1
    for status in JOB_STATUSES:
        assert _value(m["vtrans_jobs"], "vtrans_jobs", status=status) == by_status.get(status, 0)
    assert by_status["queued"] >= 1 and by_status["running"] >= 1 and by_status["succeeded"] >= 1
    assert _value(m["vtrans_queue_depth"], "vtrans_queue_depth") == by_status["queued"]
    assert _value(m["vtrans_queue_oldest_age_seconds"], "vtrans_queue_oldest_age_seconds") >= 0
    for kind in ("progress", "status"):
        assert _value(m["vtrans_job_events"], "vtrans_job_events_total", kind=kind) == events[kind]

    # Duration histogram by method: count and +Inf bucket agree with the finished rows.
    hist = m["vtrans_job_duration_seconds"]
    assert _value(hist, "vtrans_job_duration_seconds_count", method="faster") == len(finished_faster)
    assert _value(hist, "vtrans_job_duration_seconds_bucket", method="faster", le="+Inf") == len(finished_faster)
    buckets = sorted(((float(s.labels["le"]), s.value) for s in hist
                      if s.name.endswith("_bucket") and s.labels["method"] == "faster"))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    total = sum((j.finished_at - j.started_at).total_seconds() for j in finished_faster)
    assert abs(_value(hist, "vtrans_job_duration_seconds_sum", method="faster") - total) < 1e-3

    # The busy worker's heartbeat is reported (age from its last progress report).
    age = _value(m["vtrans_worker_heartbeat_age_seconds"], "vtrans_worker_heartbeat_age_seconds",
                 worker="metrics-worker-7")
    assert 0 <= age < 600

    # Request latency, per route template (ids are not labels).
    lat = m["vtrans_http_request_duration_seconds"]
    routes = {s.labels["route"] for s in lat}
    assert "/v1/jobs/{job_id}/events" in routes and not any(done.job_id in r for r in routes)
    assert _value(lat, "vtrans_http_request_duration_seconds_count", route="/v1/jobs/{job_id}/events",
                  method="GET", status="200") >= 1

    # Counters move: one more progress report shows up in the next scrape.
    busy.progress()
    again = _scrape(live_api)
    assert _value(again["vtrans_job_events"], "vtrans_job_events_total", kind="progress") == events["progress"] + 1
