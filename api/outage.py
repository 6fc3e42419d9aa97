"""A database or broker that cannot be reached is a temporary condition, not a bug: answer
503 with Retry-After (problem+json) instead of 500, so clients and load balancers back off and
retry. Installed by api/app.py; the connect timeouts that keep these answers quick are in
settings (db_connect_timeout) and the Celery/kombu configuration."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from sqlalchemy import exc as sa_exc

from .middleware import RetryAfterOn503
from .problems import problem_response
from .settings import Settings

log = logging.getLogger("vtrans.api")


def _broker_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError

        errors.append(KombuOperationalError)
    except ImportError:
        pass
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeout

        errors += [RedisConnectionError, RedisTimeout]
    except ImportError:
        pass
    return tuple(errors)


def install(app: FastAPI, settings: Settings) -> None:
    retry = {"Retry-After": str(settings.retry_after_seconds)}

    async def database_down(request: Request, exc: Exception):
        log.warning("database unreachable on %s: %s", request.url.path, str(exc).splitlines()[0][:200])
        return problem_response(request, 503, "the database is unreachable; retry shortly",
                                slug="database-unavailable", headers=retry)

    async def broker_down(request: Request, exc: Exception):
        log.warning("broker unreachable on %s: %s", request.url.path, exc)
        return problem_response(request, 503, "the job queue is unreachable; retry shortly",
                                slug="broker-unavailable", headers=retry)

    # OperationalError/InterfaceError: connection refused, dropped or timed out (psycopg and
    # sqlite "database is locked" alike); TimeoutError: no pooled connection came free in time.
    for cls in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
        app.add_exception_handler(cls, database_down)
    for cls in _broker_errors():
        app.add_exception_handler(cls, broker_down)

    async def unstorable_value(request: Request, exc: Exception):
        # Postgres refuses some values any client can send (a NUL byte in a path or query
        # parameter, found by the hostile-input tests): the request is at fault, not the server.
        log.info("refused an unstorable value on %s: %s", request.url.path, str(exc).splitlines()[0][:200])
        return problem_response(request, 422, "a value in the request cannot be stored or searched "
                                "(NUL byte or similar)", title="Invalid request", slug="invalid-request")

    app.add_exception_handler(sa_exc.DataError, unstorable_value)

    # Every 503 (readiness, a route's own "queue unreachable") tells clients when to retry.
    app.add_middleware(RetryAfterOn503, seconds=settings.retry_after_seconds)
