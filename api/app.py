"""The FastAPI application. Routers are listed in ROUTERS: adding a resource is one line."""
from __future__ import annotations

import importlib
import logging
from contextlib import asynccontextmanager
from typing import Callable

import anyio.to_thread
from fastapi import FastAPI

from . import contract, core_bridge, key_cache, outage, problems
from .artifacts import ArtifactStore
from .db import check_migrated, configure_pool
from .middleware import RefuseOversizedUploads
from .settings import Settings, get_settings

log = logging.getLogger("vtrans.api")

# Each module exposes `router`. The live helper (issue #4) adds api.routes.events,
# api.routes.metrics and api.routes.dashboard here.
ROUTERS = [
    "api.routes.health",
    "api.routes.models",
    "api.routes.datasets",
    "api.routes.jobs",
    "api.routes.schedules",
    "api.routes.webhooks",
    "api.routes.events",
    "api.routes.metrics",
    "api.routes.dashboard",
]


def celery_enqueue(settings: Settings) -> Callable[[str], None]:
    def enqueue(job_id: str, queue: str | None = None) -> None:
        from worker.celery_app import send_job

        send_job(settings, job_id, queue)

    # POST /v1/jobs passes the queue its row was routed to, which spares send_job reading it back
    # (a session and a query per submit); stand-ins that take only the id (tests) get only the id.
    enqueue.takes_queue = True  # type: ignore[attr-defined]
    return enqueue


# Every error is RFC 9457 problem+json (api/problems.py); declaring it once for all routes makes
# the OpenAPI document true to what clients get (and replaces FastAPI's default 422 schema).
PROBLEM_RESPONSES = contract.APP_RESPONSES


def create_app(settings: Settings | None = None, enqueue: Callable[[str], None] | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_pool(settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        check_migrated(settings.db_url)  # refuse to serve on an un-migrated database
        core_bridge.start_warm_up()
        # Sync routes, sync dependencies and the SSE polls all run on anyio's default thread pool.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        listener = key_cache.start_listener(settings.db_url, settings.db_connect_timeout,
                                            settings.api_key_cache_seconds)
        try:
            yield
        finally:
            if listener is not None:
                listener.stop()

    app = FastAPI(title="vtrans", version="0.1.0", lifespan=lifespan, responses=PROBLEM_RESPONSES,
                  description="Compress transformer models with VTrans structured pruning.",
                  generate_unique_id_function=contract.operation_id)
    contract.install(app)
    app.state.settings = settings
    app.state.store = ArtifactStore(settings.artifacts)
    app.state.enqueue = enqueue if enqueue is not None else celery_enqueue(settings)
    problems.install(app)

    # Middleware added later wraps the earlier ones (Starlette): the request timing of
    # api/routes/metrics.py is outermost, then Retry-After on 503 (api/outage.py), then this.
    app.add_middleware(RefuseOversizedUploads, settings=settings)

    outage.install(app, settings)  # database / broker unreachable -> 503 + Retry-After

    for name in ROUTERS:
        module = importlib.import_module(name)
        app.include_router(module.router)
        getattr(module, "install", lambda _app: None)(app)  # e.g. metrics' request-timing middleware
    return app
