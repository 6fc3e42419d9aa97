"""Webhook endpoints, the outbox and Standard Webhooks signing (issue #14).

An event is written to `webhook_messages` (one row per subscribed endpoint) by `emit()` inside
the SAME transaction as the state change it reports, so a committed change always has its
messages and a rolled-back one never does. The sender (api/webhook_delivery.py) delivers them
later, at least once.

Signing follows the Standard Webhooks specification (https://www.standardwebhooks.com):
    webhook-id:        the message id (msg_...), identical on every retry: receivers deduplicate on it
    webhook-timestamp: Unix seconds of this attempt
    webhook-signature: "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))
where key is the base64-decoded part of the endpoint's secret after "whsec_". Any Standard
Webhooks verifier library accepts these (the tests use the `standardwebhooks` package).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import db_now
from .models import Job, WebhookEndpoint, WebhookMessage, new_id, utcnow

EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled", "schedule.run")
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    ts = int((now or utcnow()).timestamp())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(secret, msg_id, ts, body),
            "content-type": "application/json", "user-agent": "vtrans-webhooks/1"}


def emit(session: Session, tenant: str, event_type: str, data: dict[str, Any]) -> list[str]:
    """Queue `event_type` for every endpoint of the tenant subscribed to it, in the caller's
    transaction. Returns the message ids."""
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant)).all()
    subscribed = [ep for ep in endpoints if event_type in (ep.events or [])]
    if not subscribed:
        return []
    now = db_now(session)   # next_attempt_at: the senders check it on the database's clock
    ids = []
    for ep in subscribed:
        msg_id = new_id("msg")
        body = json.dumps({"type": event_type, "timestamp": now.isoformat(), "data": data},
                          separators=(",", ":"), sort_keys=True, default=str)
        session.add(WebhookMessage(id=msg_id, endpoint_id=ep.id, tenant_id=tenant, event_type=event_type,
                                   body=body, status="pending", attempts=0, next_attempt_at=now, created_at=now))
        ids.append(msg_id)
    session.flush()
    return ids


def job_payload(job: Job) -> dict[str, Any]:
    return {"id": job.id, "status": job.status, "model": job.model, "dataset": job.dataset,
            "model_source": (job.request or {}).get("model_source"),
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "error": job.error, "metrics": _summary(job.metrics), "url": f"/v1/jobs/{job.id}"}


def _summary(metrics: dict | None) -> dict | None:
    # The headline figures; the whole metrics dict (with its training history) is one GET away.
    if not metrics:
        return None
    keys = ("method", "params_fraction", "flops_fraction", "speedup", "warnings")
    out = {k: metrics.get(k) for k in keys if k in metrics}
    for side in ("dense", "pruned"):
        if isinstance(metrics.get(side), dict):
            out[side] = {k: metrics[side].get(k) for k in ("accuracy", "f1") if k in metrics[side]}
    return out


def emit_job_status(session: Session, job_id: str) -> list[str]:
    """For a job that just reached a terminal status (called inside that transaction)."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status not in ("succeeded", "failed", "cancelled"):
        return []
    return emit(session, job.tenant_id, f"job.{job.status}", job_payload(job))
