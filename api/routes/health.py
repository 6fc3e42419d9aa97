"""Liveness (the process answers) and readiness (database and broker reachable)."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from sqlalchemy import text

from ..db import get_engine
from .. import contract, schemas
from ..problems import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="getHealth", response_model=schemas.Health, summary="Liveness")
def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


def _check_db(url: str) -> None:
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_broker(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1, timeout=3)


@router.get("/readyz", operation_id="getReadiness", response_model=schemas.Readiness, summary="Readiness",
            responses={503: contract.problem(503, "a dependency is unreachable; errors[] names it")})
async def readyz(request: Request) -> schemas.Readiness:
    settings = request.app.state.settings
    checks = {}
    for name, fn, arg in (("database", _check_db, settings.db_url), ("broker", _check_broker, settings.broker)):
        try:
            await asyncio.wait_for(asyncio.to_thread(fn, arg), timeout=5)
            checks[name] = "ok"
        except Exception as exc:  # report which dependency is down and why
            checks[name] = f"unreachable: {type(exc).__name__}: {exc}"[:300]
    bad = {k: v for k, v in checks.items() if v != "ok"}
    if bad:
        raise Problem(503, "; ".join(f"{k} {v}" for k, v in bad.items()), slug="not-ready",
                      errors=[{"field": k, "message": v} for k, v in bad.items()])
    return schemas.Readiness(status="ready", checks=checks)
