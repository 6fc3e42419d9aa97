"""Which queues live workers consume (issue #16). Each worker process upserts one row in `workers`
from its reaper loop; the API reads the rows seen recently to tell a job that waits its turn
from one that waits for a kind of worker nobody runs (e.g. a gpu job with only cpu workers up)."""
from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from .db import db_now, session_scope
from .models import Worker

FORGET_AFTER = timedelta(days=1)   # rows of workers gone this long are deleted by any live worker
# How long an API process reuses what it read of the workers table. Workers beat every few
# seconds and count as gone only after worker_stale_after (a minute by default), so a second's
# reuse changes no answer that matters, and spares every GET and list of a queued job a query
# (issue #16's load benchmark: the filtered list of queued jobs asked on every request).
LIVE_QUEUES_TTL_SECONDS = 1.0
# One dict assignment per refresh: atomic, so readers on other threads need no lock.
_live_cache: dict[tuple[str, float], tuple[float, dict[str, int]]] = {}


def beat(db_url: str, worker_id: str, hostname: str, queues: list[str]) -> None:
    _live_cache.clear()   # a worker in this very process (the embedded server) is seen at once
    with session_scope(db_url) as s:
        now = db_now(s)
        found = s.execute(update(Worker).where(Worker.id == worker_id).values(last_seen=now, queues=queues)
                          .returning(Worker.id).execution_options(synchronize_session=False)).first()
        if found is None:  # the id is unique to this process, so no one else inserts it
            s.add(Worker(id=worker_id, hostname=hostname, queues=queues, started_at=now, last_seen=now))
        s.execute(delete(Worker).where(Worker.last_seen < now - FORGET_AFTER)
                  .execution_options(synchronize_session=False))


def forget(db_url: str, worker_id: str) -> None:
    """A worker shutting down cleanly says so at once instead of going stale."""
    _live_cache.clear()
    with session_scope(db_url) as s:
        s.execute(delete(Worker).where(Worker.id == worker_id).execution_options(synchronize_session=False))


def live_queues(db: Session, stale_after: float) -> dict[str, int]:
    """{queue: number of workers seen within stale_after seconds that consume it}, as read at
    most LIVE_QUEUES_TTL_SECONDS ago by this process."""
    key = (str(db.get_bind().url), float(stale_after))
    now = time.monotonic()
    cached = _live_cache.get(key)
    if cached is not None and now - cached[0] < LIVE_QUEUES_TTL_SECONDS:
        return dict(cached[1])
    counts = read_live_queues(db, stale_after)
    _live_cache[key] = (now, counts)
    return dict(counts)


def read_live_queues(db: Session, stale_after: float) -> dict[str, int]:
    """live_queues read from the table now, without the process's one-second reuse."""
    window = timedelta(seconds=stale_after)
    # The database's clock (db_now), computed in the query itself on Postgres: one round trip.
    cutoff = func.now() - window if db.get_bind().dialect.name == "postgresql" else db_now(db) - window
    counts: dict[str, int] = {}
    for queues in db.scalars(select(Worker.queues).where(Worker.last_seen >= cutoff)):
        for q in queues or []:
            counts[q] = counts.get(q, 0) + 1
    return counts


def waiting_reason(status: str, queue: str | None, default_queue: str, live: dict[str, int] | None) -> str | None:
    """Why a queued job is not starting, when the reason is that no live worker serves its queue."""
    if status != "queued" or live is None:
        return None
    q = queue or default_queue
    if live.get(q):
        return None
    return f"waiting for a worker on queue '{q}': no live worker consumes it (start one with `vtrans worker --queues {q}`)"
