"""FastAPI dependencies: settings, database session and artifact store live on app.state so a
test (or the embedded server) can build an app with its own configuration."""
from __future__ import annotations

from typing import AsyncIterator

import anyio

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from .artifacts import ArtifactStore
from .db import commit_and_close, open_session, rollback_and_close
from .problems import Problem
from .settings import Settings


# async: FastAPI runs a plain `def` dependency in a worker thread, a hop that costs more than
# reading an attribute (issue #16 load benchmark). These two never block.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


# Methods that only read (RFC 9110 "safe"): their routes never write, so their statements need no
# transaction around them.
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


async def get_db(request: Request) -> AsyncIterator[Session]:
    """The request's session, committed after the route (rolled back if it raised), as
    session_scope does. A plain generator would cost two worker-thread hops per request, one
    to open and one to close; opening a Session does no I/O (it connects on its first query),
    so it happens here on the event loop, and closing goes to a thread only when a transaction
    is open or a change is pending (the route read or wrote without committing). The hand-offs
    are shielded from cancellation (a client that disconnects): the connection always returns to
    the pool.

    A GET's session runs in autocommit (each SELECT its own transaction): no BEGIN, no COMMIT,
    and closing it on the event loop does no I/O — three round trips and a thread hop fewer on
    the API's most frequent requests (issue #16's load benchmark). The statements of one GET
    then do not share a snapshot; none of the GET routes needs one (a job's artifacts are
    committed before the job reads as succeeded)."""
    read_only = request.method in READ_ONLY_METHODS
    session = open_session(request.app.state.settings.db_url, autocommit=read_only)
    try:
        yield session
    except GeneratorExit:   # dropped unfinished (never by FastAPI): no await is possible here
        session.close()
        raise
    except BaseException:
        if read_only:
            session.close()
            raise
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(rollback_and_close, session)
        raise
    if read_only:
        session.close()
    elif session.in_transaction() or session.new or session.dirty or session.deleted:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(commit_and_close, session)
    else:
        session.close()   # no transaction, no connection: nothing to wait for


def owned_or_404(db: Session, row_class, row_id: str, tenant: str, noun: str, columns: tuple = ()):
    """The tenant's row with this id, or 404 — never 403, so ids of other tenants stay unknowable.
    With `columns`: a plain row of just those (read-only answers), not an ORM instance."""
    where = (row_class.id == row_id, row_class.tenant_id == tenant)
    row = (db.execute(select(*columns).where(*where)).first() if columns
           else db.scalar(select(row_class).where(*where)))
    if row is None:
        raise Problem(404, f"no {noun} with id {row_id!r}", slug="not-found")
    return row
