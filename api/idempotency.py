"""Idempotency-Key for POST /v1/jobs (IETF httpapi draft): a retried submit returns the job the
first one created; the same key with a different body is a 409.

Safety under concurrency comes from the table's primary key (tenant_id, key), not from a
check-then-insert: the key row is inserted in the same transaction as the job row, so when two
identical requests race, the second INSERT waits for the first commit and fails, its own job row
is rolled back with it, and it answers with the winner's job. Keys are scoped per tenant.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .models import IdempotencyKey, Job, utcnow
from .problems import Problem, field_problem

HEADER = "Idempotency-Key"
# Visible ASCII, as header values are; long enough for a UUID or a client's own scheme.
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_key(value: str) -> str:
    value = value.strip().strip('"')  # the draft spells it as a quoted string; accept both
    if not _KEY.match(value):
        raise field_problem(422, HEADER, "must be 1-255 visible ASCII characters")
    return value


def request_hash(body: dict[str, Any]) -> str:
    """Order-insensitive fingerprint of the request body: same JSON meaning, same hash."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(db: Session, tenant: str, key: str, body_hash: str) -> Job | None:
    """The job an earlier request with this key created, or None if the key is new.
    409 when the key was used with a different body."""
    row = db.get(IdempotencyKey, (tenant, key), populate_existing=True)
    if row is None:
        return None
    if row.request_hash != body_hash:
        raise Problem(409, f"{HEADER} {key!r} was already used with a different request body; "
                           "use a new key for a new job", slug="idempotency-key-reused",
                      errors=[{"field": HEADER, "message": "already used with a different request body"}])
    job = db.scalar(select(Job).where(Job.id == row.job_id, Job.tenant_id == tenant))
    if job is None:  # cannot happen with the foreign key, but never answer with someone else's job
        raise Problem(409, f"{HEADER} {key!r} refers to a job that no longer exists", slug="idempotency-key-reused")
    return job


def record(db: Session, tenant: str, key: str, body_hash: str, job_id: str) -> None:
    """Insert the key row in the caller's transaction; IntegrityError means another request won."""
    db.add(IdempotencyKey(tenant_id=tenant, key=key, request_hash=body_hash, job_id=job_id, created_at=utcnow()))
    db.flush()


def forget(db: Session, tenant: str, key: str) -> None:
    """Drop the key (the submit failed before a worker heard of the job), so a retry can start
    a fresh job instead of replaying the failure."""
    db.execute(delete(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant, IdempotencyKey.key == key))
