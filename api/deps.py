"""FastAPI dependencies: settings, database session and artifact store live on app.state so a
test (or the embedded server) can build an app with its own configuration."""
from __future__ import annotations

from typing import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from .artifacts import ArtifactStore
from .db import session_scope
from .settings import Settings


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_db(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.settings.db_url) as session:
        yield session
