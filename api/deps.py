"""FastAPI dependencies: settings, database session and artifact store live on app.state so a
test (or the embedded server) can build an app with its own configuration."""
from __future__ import annotations

from typing import Iterator

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from .artifacts import ArtifactStore
from .db import session_scope
from .problems import Problem
from .settings import Settings


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_db(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.settings.db_url) as session:
        yield session


def owned_or_404(db: Session, row_class, row_id: str, tenant: str, noun: str):
    """The tenant's row with this id, or 404 — never 403, so ids of other tenants stay unknowable."""
    row = db.scalar(select(row_class).where(row_class.id == row_id, row_class.tenant_id == tenant))
    if row is None:
        raise Problem(404, f"no {noun} with id {row_id!r}", slug="not-found")
    return row
