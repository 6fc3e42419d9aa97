"""SQLAlchemy 2 models. Every row that belongs to someone carries tenant_id (issue #5)."""
from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

DEFAULT_TENANT = "default"
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python on both backends (SQLite stores naive text, so we normalise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class ApiKey(Base):
    """Filled by issue #5; only the hash is stored, `prefix` lets a user tell keys apart."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    hashed_key: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(512))   # prefix in the artifact store
    model_type: Mapped[str] = mapped_column(String(64))
    architectures: Mapped[list] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    files: Mapped[list] = mapped_column(JSON, default=list)  # [{"name", "size"}]
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Issue #14: uploads under a stable name are numbered versions 1, 2, ... (immutable rows);
    # the unique constraint makes two racing uploads under one name get different numbers.
    name: Mapped[str | None] = mapped_column(String(64), default=None)
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    __table_args__ = (UniqueConstraint("tenant_id", "name", "version", name="uq_models_tenant_name_version"),)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    filename: Mapped[str] = mapped_column(String(255))
    storage_key: Mapped[str] = mapped_column(String(512))   # the file in the artifact store
    format: Mapped[str] = mapped_column(String(8))           # csv | jsonl
    rows: Mapped[int] = mapped_column(Integer)
    labels: Mapped[list] = mapped_column(JSON, default=list)
    has_text_pair: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # Filtered lists (GET /v1/jobs?status=) and the active-jobs count per submit (migration 0006).
        Index("ix_jobs_tenant_status_created", "tenant_id", "status", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_status_queue", "status", "queue"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    model: Mapped[str] = mapped_column(String(128))     # uploaded model id or hub ID
    dataset: Mapped[str] = mapped_column(String(128))   # uploaded dataset id or built-in name
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)  # normalized request
    queue: Mapped[str | None] = mapped_column(String(64), default=None)  # Celery queue (api/routing.py)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # {"type", "message", "field"?}
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Claim / lease bookkeeping (see api/jobstore.py).
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)  # last job_events.seq handed out
    # A job sent back to the queue to wait for the hub (migration 0007, jobstore.defer): no claim
    # before retry_at; wait_reason is the API's waiting_reason meanwhile; hub_state carries the
    # download attempts and waiting already used; deferrals do not count against max_attempts.
    retry_at: Mapped[datetime | None] = mapped_column(default=None)
    deferrals: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    wait_reason: Mapped[str | None] = mapped_column(Text, default=None)
    hub_state: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # The id of the broker message sent for retry_at (migration 0008): an early delivery of that
    # message re-schedules itself for the time left (jobstore.reschedule_early); others are dropped.
    retry_message_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Worker(Base):
    """A live worker process and the queues it consumes, upserted by its reaper loop (issue #16)."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=False)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class JobEvent(Base):
    """One row per progress report and per status change; the SSE stream replays them by seq."""

    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))             # progress | status
    status: Mapped[str | None] = mapped_column(String(16), default=None)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    fraction: Mapped[float | None] = mapped_column(Float, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A file of a job's result. Rows are written only when an attempt's whole set is final."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(255))            # e.g. model/config.json, model.tar.gz
    storage_key: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)  # hex; null before migration 0003
    attempt: Mapped[int] = mapped_column(Integer)
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """POST /v1/jobs with an Idempotency-Key header (issue #5, migration 0002). The primary key
    (tenant_id, key) makes a concurrent duplicate fail at INSERT, never create a second job."""

    __tablename__ = "idempotency_keys"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))    # sha256 of the canonical JSON body
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Schedule(Base):
    """Issue #14: a job template fired on a cron timetable and/or when a new model version appears."""

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_next_due", "next_due_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(128), default=None)
    template: Mapped[dict[str, Any]] = mapped_column(default=dict)    # a job request, as submitted
    cron: Mapped[str | None] = mapped_column(String(128), default=None)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    on_new_version: Mapped[bool] = mapped_column(Boolean, default=False)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_due_at: Mapped[datetime | None] = mapped_column(default=None)  # next cron firing (UTC)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScheduleRun(Base):
    """One row per firing (and per missed due time). The unique (schedule_id, due_at) is what
    makes a firing happen once however many scheduler processes race for it."""

    __tablename__ = "schedule_runs"
    __table_args__ = (UniqueConstraint("schedule_id", "due_at", name="uq_schedule_runs_due"),
                      Index("ix_schedule_runs_schedule_created", "schedule_id", "created_at"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime] = mapped_column()
    trigger: Mapped[str] = mapped_column(String(16))          # cron | new_version
    outcome: Mapped[str] = mapped_column(String(16))          # job_created | skipped | missed
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), default=None)
    source: Mapped[str | None] = mapped_column(String(128), default=None)  # model id or hub revision used
    missed: Mapped[int] = mapped_column(Integer, default=0)   # due times folded into this catch-up firing
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """Issue #14. The secret is needed to sign every delivery, so it is stored encrypted
    (api/secretbox.py, with VTRANS_SECRET_KEY), not hashed; in plain text without a key."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookMessage(Base):
    """The outbox: written in the transaction of the state change it reports; its id is the
    `webhook-id` header, the same on every retry so receivers can deduplicate."""

    __tablename__ = "webhook_messages"
    __table_args__ = (Index("ix_webhook_messages_due", "status", "next_attempt_at"),
                      Index("ix_webhook_messages_endpoint", "endpoint_id", "created_at"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)                   # the exact bytes signed and sent
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)  # a sender's lease
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
