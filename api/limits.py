"""Per-tenant limits: active (queued + running) jobs -> 429, upload size -> 413 (issue #5).

Defaults come from settings (max_active_jobs, max_model_upload_bytes, max_model_unpacked_bytes,
max_dataset_upload_bytes); settings.tenant_limits overrides any of them for one tenant. Upload
sizes are checked twice: from Content-Length before the body is read (refuse_upload), and on the
bytes really received and unpacked (the routes), so a lying header gains nothing.
"""
from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from . import problems
from .models import Job
from .settings import Settings

ACTIVE = ("queued", "running")
UPLOAD_LIMITS = {"/v1/models": "max_model_upload_bytes", "/v1/datasets": "max_dataset_upload_bytes"}
MULTIPART_SLACK = 64 * 1024   # form boundaries and headers around the file itself
JOB_RETRY_AFTER = 30          # seconds: a compression job rarely ends sooner


def tenant_limit(settings: Settings, tenant: str | None, name: str) -> int:
    override = settings.tenant_limits.get(tenant or "", {}) if tenant else {}
    return int(override.get(name, getattr(settings, name)))


def human_bytes(n: int) -> str:
    """'6 GiB (6442450944 bytes)': readable, and exact for scripts comparing sizes."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.4g} {unit} ({n} bytes)"
    return f"{n} bytes"


def too_large(limit: int, filename: str | None = None, what: str = "upload") -> problems.Problem:
    """413 naming the form field `file`, the file when known, and the tenant's limit."""
    name = f"{filename!r} " if filename else "the upload "
    verb = "unpacks to more than" if what == "unpacked" else "is larger than"
    setting = {"upload": "upload", "unpacked": "unpacked-size"}.get(what, what)
    message = f"{name}{verb} this tenant's {setting} limit of {human_bytes(limit)}"
    return problems.Problem(413, f"file: {message}", slug="upload-too-large", title="Upload too large",
                            errors=[{"field": "file", "message": message}])


def check_active_jobs(db: Session, settings: Settings, tenant: str, *, new_job_flushed: bool = False) -> None:
    """429 when the tenant already has its maximum of queued + running jobs.

    new_job_flushed: the job being submitted is already flushed in this transaction (and counted
    by the SELECT below): the others must number below the limit. A submit checks last, right
    before its commit, so the tenant's lock is held for two round trips (this check, the commit)
    instead of the whole insert (issue #16's load run: at 50 submits/s of one tenant, a lock held
    across five round trips, each waiting for the GIL, made the submits queue behind each other)."""
    limit = tenant_limit(settings, tenant, "max_active_jobs")
    if db.get_bind().dialect.name == "postgresql":
        # Serialise this tenant's submits until commit, so two racing requests cannot both see
        # "one slot left" (SQLite serialises writers by itself).
        db.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"vtrans-active-jobs:{tenant}"))))
    # Counted up to the limit only: whether it is reached is all that is asked, and a tenant with
    # thousands of queued jobs then costs a bounded index range per submit, not all of them.
    own = 1 if new_job_flushed else 0
    active_rows = (select(Job.id).where(Job.tenant_id == tenant, Job.status.in_(ACTIVE))
                   .limit(limit + own).subquery())
    active = db.scalar(select(func.count()).select_from(active_rows)) - own
    if active >= limit:
        raise problems.Problem(
            429, f"this tenant already has {active} queued or running jobs (limit {limit}); wait for one "
                 "to finish or cancel one", slug="too-many-active-jobs",
            headers={"Retry-After": str(JOB_RETRY_AFTER)})


def _tenant_of(settings: Settings, request: Request) -> str | None:
    from .auth import lookup_tenant

    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip() or len(key) > 256:
        return None
    return lookup_tenant(settings, key.strip())


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
        # The file's name is inside the multipart body, which is deliberately never read here.
        exc = too_large(limit)
        return problems.problem_response(request, 413, exc.detail, slug=exc.slug, title=exc.title,
                                         errors=exc.errors)
    return None
