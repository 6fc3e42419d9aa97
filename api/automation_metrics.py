"""Schedule and webhook figures for GET /metrics (issue #14), read from the database at scrape
time like the job figures (api/routes/metrics.py), so every API replica reports the same."""
from __future__ import annotations

from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from .db import session_scope
from .models import Schedule, ScheduleRun, WebhookMessage, utcnow


class AutomationCollector:
    def __init__(self, db_url: str):
        self.db_url = db_url

    def collect(self) -> Iterable:
        try:
            families = self._from_db()
        except Exception:  # vtrans_metrics_db_up (the jobs collector) already says the DB did not answer
            return
        yield from families

    def _from_db(self) -> list:
        now = utcnow()
        with session_scope(self.db_url) as s:
            states = dict(s.execute(select(Schedule.paused, func.count()).group_by(Schedule.paused)).all())
            outcomes = s.execute(select(ScheduleRun.trigger, ScheduleRun.outcome, func.count())
                                 .group_by(ScheduleRun.trigger, ScheduleRun.outcome)).all()
            overdue = s.scalar(select(func.min(Schedule.next_due_at)).where(Schedule.next_due_at <= now))
            last_cron = s.execute(select(ScheduleRun.due_at, ScheduleRun.created_at)
                                  .where(ScheduleRun.trigger == "cron", ScheduleRun.outcome != "missed")
                                  .order_by(ScheduleRun.created_at.desc()).limit(1)).first()
            messages = dict(s.execute(select(WebhookMessage.status, func.count()).group_by(WebhookMessage.status)).all())
            oldest_pending = s.scalar(select(func.min(WebhookMessage.created_at)).where(WebhookMessage.status == "pending"))

        sched = GaugeMetricFamily("vtrans_schedules", "Schedules by state", labels=["state"])
        sched.add_metric(["active"], states.get(False, 0))
        sched.add_metric(["paused"], states.get(True, 0))
        runs = CounterMetricFamily("vtrans_schedule_runs", "Schedule firings by trigger and outcome "
                                   "(job_created, skipped, missed while no scheduler ran)", labels=["trigger", "outcome"])
        for trigger, outcome, n in sorted(outcomes):
            runs.add_metric([trigger, outcome], n)
        lag = GaugeMetricFamily("vtrans_schedule_lag_seconds", "How far the scheduler is behind: age of the "
                                "oldest due time not yet fired (0 when none is overdue)")
        lag.add_metric([], max(0.0, (now - overdue).total_seconds()) if overdue else 0.0)
        delay = GaugeMetricFamily("vtrans_schedule_last_firing_delay_seconds",
                                  "Seconds between the latest cron firing's due time and when it fired")
        delay.add_metric([], max(0.0, (last_cron[1] - last_cron[0]).total_seconds()) if last_cron else 0.0)
        hooks = GaugeMetricFamily("vtrans_webhook_messages", "Webhook outbox messages by status", labels=["status"])
        for status in ("pending", "delivered", "failed"):
            hooks.add_metric([status], messages.get(status, 0))
        age = GaugeMetricFamily("vtrans_webhook_oldest_pending_age_seconds",
                                "Age of the oldest undelivered webhook message (0 if none)")
        age.add_metric([], max(0.0, (now - oldest_pending).total_seconds()) if oldest_pending else 0.0)
        return [sched, runs, lag, delay, hooks, age]
