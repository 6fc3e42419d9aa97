"""GET /metrics in Prometheus text format.

Job, queue, event and heartbeat figures are read from the database AT SCRAPE TIME by a custom
collector: the API, the workers and any number of API replicas share the database, so every
replica reports the same, correct numbers (a counter incremented in the worker process would be
invisible to the API process). Only the request-latency histogram is per process, recorded by
a middleware (`install(app)`), as Prometheus expects for request metrics.
"""
from __future__ import annotations

import time
from datetime import timezone
from typing import Iterable

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import worker_registry
from ..db import session_scope
from ..models import JOB_STATUSES, Job, JobEvent, utcnow

router = APIRouter(tags=["metrics"])

# Compressions last from seconds (tiny test models) to hours (BERT-base on CPU).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _aware(dt):
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class JobsCollector:
    """Reads the jobs and job_events tables on every scrape."""

    def __init__(self, db_url: str, default_queue: str = "vtrans", stale_after: float = 150.0):
        self.db_url, self.default_queue, self.stale_after = db_url, default_queue, stale_after

    def collect(self) -> Iterable:
        up = GaugeMetricFamily("vtrans_metrics_db_up", "1 when the database answered this scrape")
        try:
            families = self._from_db()
        except Exception:  # a scrape must still answer, saying the DB did not
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _from_db(self) -> list:
        now = utcnow()
        with session_scope(self.db_url) as s:
            by_status = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            events = dict(s.execute(select(JobEvent.kind, func.count()).group_by(JobEvent.kind)).all())
            histogram = _duration_histogram(s)
            running = s.execute(select(Job.worker_id, func.max(Job.updated_at))
                                .where(Job.status == "running").group_by(Job.worker_id)).all()
            oldest_queued = s.scalar(select(func.min(Job.created_at)).where(Job.status == "queued"))
            per_queue = s.execute(select(Job.queue, func.count()).where(Job.status == "queued")
                                  .group_by(Job.queue)).all()
            live = worker_registry.live_queues(s, self.stale_after)

        jobs = GaugeMetricFamily("vtrans_jobs", "Jobs by status", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], by_status.get(status, 0))
        queue = GaugeMetricFamily("vtrans_queue_depth", "Jobs waiting for a worker (status queued)")
        queue.add_metric([], by_status.get("queued", 0))
        wait = GaugeMetricFamily("vtrans_queue_oldest_age_seconds", "Age of the oldest queued job (0 if none)")
        wait.add_metric([], max(0.0, (now - _aware(oldest_queued)).total_seconds()) if oldest_queued else 0.0)

        emitted = CounterMetricFamily("vtrans_job_events", "Job events recorded (progress reports and status changes)",
                                      labels=["kind"])
        for kind in sorted(set(events) | {"progress", "status"}):
            emitted.add_metric([kind], events.get(kind, 0))

        hist = HistogramMetricFamily("vtrans_job_duration_seconds",
                                     "Wall time of finished jobs, from claim to end", labels=["method"])
        for method, (buckets, total) in sorted(histogram.items()):
            hist.add_metric([method], buckets, sum_value=total)

        beat = GaugeMetricFamily("vtrans_worker_heartbeat_age_seconds",
                                 "Seconds since a busy worker last reported progress (renewing its lease)",
                                 labels=["worker"])
        for worker, last in running:
            if worker and last:
                beat.add_metric([worker], max(0.0, (now - _aware(last)).total_seconds()))
        depth = GaugeMetricFamily("vtrans_queue_depth_per_queue", "Queued jobs by the worker queue they were "
                                  "routed to (issue #16)", labels=["queue"])
        counts: dict[str, int] = {}
        for name, n in per_queue:  # rows from before routing have no queue: they went to the default
            counts[name or self.default_queue] = counts.get(name or self.default_queue, 0) + n
        for name in sorted(set(counts) | set(live)):
            depth.add_metric([name], counts.get(name, 0))
        workers = GaugeMetricFamily("vtrans_queue_live_workers", "Live worker processes consuming each queue",
                                    labels=["queue"])
        for name in sorted(set(counts) | set(live)):
            workers.add_metric([name], live.get(name, 0))
        return [jobs, queue, wait, emitted, hist, beat, depth, workers]


def _duration_histogram(s: Session) -> dict[str, tuple[list[tuple[str, float]], float]]:
    """{method: (cumulative buckets, sum of seconds)} of finished jobs that ran, counted by the
    database: one row per method whatever the number of jobs (reading every finished job's
    request into Python made each scrape O(jobs): ~10k rows per scrape at the load benchmark)."""
    seconds = _seconds_between(s, Job.started_at, Job.finished_at)
    method = func.coalesce(Job.request["method"].as_string(), "unknown")
    columns = [func.sum(case((seconds <= b, 1), else_=0)) for b in DURATION_BUCKETS]
    rows = s.execute(select(method, func.count(), func.coalesce(func.sum(seconds), 0.0), *columns)
                     .where(Job.started_at.is_not(None), Job.finished_at.is_not(None)).group_by(method)).all()
    out = {}
    for name, count, total, *in_bucket in rows:
        buckets = [(str(b), int(n or 0)) for b, n in zip(DURATION_BUCKETS, in_bucket)] + [("+Inf", int(count))]
        out[str(name)] = (buckets, float(total))
    return out


def _seconds_between(s: Session, start, end):
    """end - start in seconds, clamped at 0 (clock skew between machines), in SQL."""
    if s.get_bind().dialect.name == "postgresql":
        diff = func.extract("epoch", end - start)
    else:  # SQLite stores ISO text: julianday() parses it (offsets included)
        diff = (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.greatest(diff, 0.0) if s.get_bind().dialect.name == "postgresql" else func.max(diff, 0.0)


def registry_for(app: FastAPI) -> CollectorRegistry:
    """One registry per app (tests build several apps in one process; the global REGISTRY
    would refuse a second collector with the same names)."""
    reg = getattr(app.state, "metrics_registry", None)
    if reg is None:
        reg = CollectorRegistry(auto_describe=True)
        st = app.state.settings
        reg.register(JobsCollector(st.db_url, st.queue, st.worker_stale_after))
        from ..automation_metrics import AutomationCollector  # schedules and webhooks (issue #14)

        reg.register(AutomationCollector(app.state.settings.db_url))
        app.state.metrics_registry = reg
        app.state.request_latency = Histogram(
            "vtrans_http_request_duration_seconds", "API request latency until the response starts",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=reg)
    return reg


class TimeRequests:
    """Observes each request's latency until its response starts, labelled by the route template
    (not the raw path: one series per endpoint, whatever the ids). Plain ASGI: it only watches the
    `http.response.start` message go by (api/middleware.py says why not @app.middleware)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            path = getattr(scope.get("route"), "path", None) or "unmatched"   # set by the router in place
            self.histogram.labels(scope["method"], path, str(status)).observe(time.perf_counter() - start)

        async def timed_send(message: Message) -> None:
            if not observed and message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not observed:   # raised before answering: the outer error handler answers 500
                observe(500)


def install(app: FastAPI) -> None:
    """Add the request-latency middleware (called once by create_app)."""
    registry_for(app)
    app.add_middleware(TimeRequests, histogram=app.state.request_latency)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(registry_for(request.app)), media_type=CONTENT_TYPE_LATEST)
