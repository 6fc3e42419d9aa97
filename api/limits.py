"""Per-tenant limits: active (queued + running) jobs -> 429, upload size -> 413 (issue #5).

Defaults come from settings (max_active_jobs, max_model_upload_bytes, max_dataset_upload_bytes);
settings.tenant_limits overrides any of them for one tenant.
"""
from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from . import problems
from .db import session_scope
from .models import Job
from .settings import Settings

ACTIVE = ("queued", "running")
UPLOAD_LIMITS = {"/v1/models": "max_model_upload_bytes", "/v1/datasets": "max_dataset_upload_bytes"}
MULTIPART_SLACK = 64 * 1024   # form boundaries and headers around the file itself
JOB_RETRY_AFTER = 30          # seconds: a compression job rarely ends sooner


def tenant_limit(settings: Settings, tenant: str | None, name: str) -> int:
    override = settings.tenant_limits.get(tenant or "", {}) if tenant else {}
    return int(override.get(name, getattr(settings, name)))


def check_active_jobs(db: Session, settings: Settings, tenant: str) -> None:
    """429 when the tenant already has its maximum of queued + running jobs."""
    limit = tenant_limit(settings, tenant, "max_active_jobs")
    if db.get_bind().dialect.name == "postgresql":
        # Serialise this tenant's submits until commit, so two racing requests cannot both see
        # "one slot left" (SQLite serialises writers by itself).
        db.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"vtrans-active-jobs:{tenant}"))))
    active = db.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant, Job.status.in_(ACTIVE)))
    if active >= limit:
        raise problems.Problem(
            429, f"this tenant already has {active} queued or running jobs (limit {limit}); wait for one "
                 "to finish or cancel one", slug="too-many-active-jobs",
            headers={"Retry-After": str(JOB_RETRY_AFTER)})


def _tenant_of(settings: Settings, request: Request) -> str | None:
    from .auth import tenant_for_key

    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip() or len(key) > 256:
        return None
    with session_scope(settings.db_url) as s:
        return tenant_for_key(s, key.strip(), settings.api_key)


async def refuse_upload(request: Request, settings: Settings) -> JSONResponse | None:
    """Checks on an upload BEFORE its body is read (and spooled to disk by the form parser):
    a valid key, a Content-Length, and a size within the tenant's limit."""
    name = UPLOAD_LIMITS.get(request.url.path.rstrip("/")) if request.method == "POST" else None
    if name is None:
        return None
    tenant = await run_in_threadpool(_tenant_of, settings, request)
    if tenant is None:
        # Same answer the route would give, but without first accepting gigabytes from a stranger.
        from .auth import unauthorized

        exc = unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        return problems.problem_response(request, 401, exc.detail, slug=exc.slug, headers=exc.headers)
    limit = tenant_limit(settings, tenant, name)
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        # A chunked body has no size up front; the form parser would spool all of it.
        return problems.problem_response(request, 411, "uploads must send a Content-Length header",
                                         slug="length-required")
    if int(length) > limit + MULTIPART_SLACK:
        return problems.problem_response(
            request, 413, f"file: the upload is larger than the limit of {limit} bytes",
            slug="upload-too-large", errors=[{"field": "file", "message": f"larger than {limit} bytes"}])
    return None
