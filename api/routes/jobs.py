"""/v1/jobs: submit, inspect, list, cancel, and download results.

POST checks everything that can be checked before running and writes nothing on error; the
row is committed first and only then is the broker told "look at job X".
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import contract, idempotency, job_requests, jobstore, limits, routing, schemas, webhooks, worker_registry
from ..artifacts import ArtifactStore, checkpoint_prefix
from ..deps import get_app_settings, get_db, get_store, owned_or_404
from ..job_requests import JobRequest
from ..models import JOB_STATUSES, Artifact, Job, utcnow
from ..problems import Problem, field_problem
from ..settings import Settings
from ..tenancy import get_tenant

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_out(job: Job, artifacts: list[Artifact] | None = None, waiting: str | None = None) -> schemas.Job:
    """The one serializer of a job (GET, lists, cancel, the SSE `end` event). `job`: a Job, or a
    row of JOB_OUT_COLUMNS (the read-only answers), which has the same attributes."""
    # A job queued again to wait for the hub (jobstore.defer) says so; once its time has come, a
    # missing worker for its queue is the reason that matters.
    retry_at = job.retry_at if job.status == "queued" else None
    if retry_at is not None and job.wait_reason and (waiting is None or retry_at > utcnow()):
        waiting = job.wait_reason
    return schemas.Job(queue=job.queue, waiting_reason=waiting, retry_at=retry_at,
        id=job.id, status=job.status, stage=job.stage, progress=job.progress, created_at=job.created_at,
        updated_at=job.updated_at, started_at=job.started_at, finished_at=job.finished_at,
        request=schemas.JobRequestEcho.model_validate(job.request), metrics=job.metrics,
        error=schemas.JobError.model_validate(job.error) if job.error else None, attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        artifacts=None if artifacts is None else [artifact_out(job.id, a) for a in artifacts])


# What job_out, the cursor and the waiting reason read: the GET and list answers load these columns
# as plain rows (attribute access like the ORM's), not Job instances. Skipping the ORM's identity
# map and the unused columns (hub_state, worker_id, leases...) is ~10% of a list's API CPU.
JOB_OUT_COLUMNS = (Job.id, Job.status, Job.queue, Job.wait_reason, Job.retry_at, Job.stage, Job.progress,
                   Job.created_at, Job.updated_at, Job.started_at, Job.finished_at, Job.request, Job.metrics,
                   Job.error, Job.attempts, Job.cancel_requested)


def model_json(model: schemas.ResponseModel, status_code: int = 200) -> Response:
    """The response model as JSON, the bytes FastAPI would send for it. A `def` route's return
    value is validated against its response_model in a worker thread of its own, a hop per
    request that checks nothing for an instance of that very model; the hot routes (submit,
    get, list, cancel) answer with the bytes directly, and keep response_model for the document."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def job_to_dict(job: Job, artifacts: list[Artifact] | None = None) -> dict[str, Any]:
    return job_out(job, artifacts).model_dump(mode="json")


def artifact_out(job_id: str, a: Artifact) -> schemas.Artifact:
    return schemas.Artifact(name=a.name, size=a.size_bytes, sha256=a.sha256, media_type=a.media_type,
                            url=f"/v1/jobs/{job_id}/artifacts/{a.name}")


def _replayed(job: Job) -> JSONResponse:
    # A retried submit (same Idempotency-Key, same body): the same job, nothing new created.
    return JSONResponse(job_to_dict(job), status_code=200, headers={"Idempotent-Replayed": "true"})


@router.post("", status_code=202, operation_id="createJob", response_model=schemas.Job,
             summary="Submit a compression job",
             response_description="the job, queued; follow it with getJob or streamJobEvents",
             responses={200: {"model": schemas.Job, "description": "replay of an earlier submit with the same "
                                                                   "Idempotency-Key and body: the job it created",
                              "headers": {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}}},
                        **contract.problems(401, 404, 409, 422, 429)})
def create_job(body: JobRequest, request: Request, db: Session = Depends(get_db),
               tenant: str = Depends(get_tenant), settings: Settings = Depends(get_app_settings),
               idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255)) -> Any:
    idem = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    body_hash = idempotency.request_hash(body.model_dump(mode="json")) if idem else ""
    if idem and (earlier := idempotency.replay(db, tenant, idem, body_hash)) is not None:
        return _replayed(earlier)
    prepared = job_requests.prepare(db, tenant, body)
    job, ev = job_requests.insert_job(db, tenant, prepared, queue=routing.queue_for(settings, tenant, prepared))
    if idem:
        try:
            idempotency.record(db, tenant, idem, body_hash, job.id)
        except IntegrityError:
            # A concurrent request with the same key committed first: drop our job row, answer with theirs.
            db.rollback()
            return _replayed(idempotency.replay(db, tenant, idem, body_hash))
    # Last, right before the commit: on Postgres the quota check holds the tenant's submit lock until
    # the commit, and every other submit of the tenant waits for it (issue #16's load benchmark). A
    # 429 raised here rolls the new rows back (get_db).
    limits.check_active_jobs(db, settings, tenant, new_job_flushed=True)
    db.commit()
    jobstore.publish(job.id, [ev])
    try:
        _enqueue(request.app.state.enqueue, job)
    except Exception as exc:
        # The row exists but no worker will hear of it: say so on the job instead of leaving it queued.
        job.status, job.finished_at = "failed", utcnow()
        job.error = {"type": "BrokerUnavailable", "message": f"could not enqueue the job: {exc}"}
        if idem:
            idempotency.forget(db, tenant, idem)  # a retry with the same key starts afresh
        db.flush()
        webhooks.emit_job_status(db, job.id)
        db.commit()
        raise Problem(503, f"the job queue is unreachable ({type(exc).__name__}); job {job.id} was marked failed",
                      slug="broker-unavailable", headers={"Retry-After": str(settings.retry_after_seconds)}) from None
    return model_json(job_out(job), 202)


def _enqueue(enqueue, job: Job) -> None:
    if getattr(enqueue, "takes_queue", False):   # api/app.celery_enqueue
        enqueue(job.id, queue=job.queue)
    else:
        enqueue(job.id)


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise field_problem(422, "cursor", "is not a cursor returned by this API") from None


@router.get("", operation_id="listJobs", response_model=schemas.JobList, summary="List jobs, newest first",
            responses=contract.problems(401, 422))
def list_jobs(status: str | None = Query(None, description="comma-separated statuses"),
              model: str | None = None, created_after: datetime | None = None,
              created_before: datetime | None = None, limit: int = Query(20, ge=1, le=100),
              cursor: str | None = None, db: Session = Depends(get_db),
              tenant: str = Depends(get_tenant), settings: Settings = Depends(get_app_settings)) -> Response:
    q = select(*JOB_OUT_COLUMNS).where(Job.tenant_id == tenant)
    if status:
        wanted = [s.strip() for s in status.split(",") if s.strip()]
        bad = [s for s in wanted if s not in JOB_STATUSES]
        if bad:
            raise field_problem(422, "status", f"unknown status {bad[0]!r} (one of {', '.join(JOB_STATUSES)})")
        q = q.where(Job.status.in_(wanted))
    if model:
        q = q.where(Job.model == model)
    if created_after:
        q = q.where(Job.created_at >= created_after)
    if created_before:
        q = q.where(Job.created_at < created_before)
    if cursor:
        c_created, c_id = _decode_cursor(cursor)
        q = q.where(or_(Job.created_at < c_created, and_(Job.created_at == c_created, Job.id < c_id)))
    rows = db.execute(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    live = _live_queues(db, settings, page)
    return model_json(schemas.JobList(data=[job_out(j, waiting=_waiting(settings, j, live)) for j in page],
                                      next_cursor=_encode_cursor(page[-1]) if len(rows) > limit else None))


def _get_job(db: Session, tenant: str, job_id: str) -> Job:
    return owned_or_404(db, Job, job_id, tenant, "job")


def _final_artifacts(db: Session, job: Job) -> list[Artifact]:
    return list(db.scalars(select(Artifact).where(Artifact.job_id == job.id, Artifact.final.is_(True))
                           .order_by(Artifact.name)).all())


@router.get("/{job_id}", operation_id="getJob", response_model=schemas.Job, summary="Get a job",
            responses=contract.problems(401, 404))
def get_job(job_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant),
            settings: Settings = Depends(get_app_settings)) -> Response:
    job = owned_or_404(db, Job, job_id, tenant, "job", columns=JOB_OUT_COLUMNS)
    waiting = _waiting(settings, job, _live_queues(db, settings, [job]))
    return model_json(job_out(job, _final_artifacts(db, job) if job.status == "succeeded" else [], waiting))


def _live_queues(db: Session, settings: Settings, jobs: list[Job]) -> dict[str, int] | None:
    # Only queued jobs can be waiting for a worker: no query for a page without any.
    if not any(j.status == "queued" for j in jobs):
        return None
    return worker_registry.live_queues(db, settings.worker_stale_after)


def _waiting(settings: Settings, job: Job, live: dict[str, int] | None) -> str | None:
    return worker_registry.waiting_reason(job.status, job.queue, settings.queue, live)


@router.post("/{job_id}/cancel", status_code=202, operation_id="cancelJob", response_model=schemas.Job,
             summary="Cancel a job", response_description="the job: cancelled at once when queued, "
             "cancel_requested while its worker stops", responses=contract.problems(401, 404, 409))
def cancel_job(job_id: str, settings: Settings = Depends(get_app_settings), db: Session = Depends(get_db),
               store: ArtifactStore = Depends(get_store), tenant: str = Depends(get_tenant)) -> Response:
    job = _get_job(db, tenant, job_id)
    if job.status in ("succeeded", "failed"):
        raise Problem(409, f"job {job_id} already {job.status}; nothing to cancel", slug="job-finished")
    if jobstore.request_cancel(settings.db_url, job_id, tenant) == "cancelled" and job.attempts:
        # requeued after a lost worker, cancelled before a new attempt: no worker will remove it
        store.delete_prefix(checkpoint_prefix(job_id))
    db.expire_all()
    return model_json(job_out(_get_job(db, tenant, job_id)), 202)


@router.get("/{job_id}/artifacts", operation_id="listJobArtifacts", response_model=schemas.ArtifactList,
            summary="List a job's result files", responses=contract.problems(401, 404))
def list_artifacts(job_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> schemas.ArtifactList:
    job = _get_job(db, tenant, job_id)
    return schemas.ArtifactList(data=[artifact_out(job.id, a) for a in _final_artifacts(db, job)])


_BINARY = {"schema": {"type": "string", "format": "binary"}}
# What worker/runner.py stores artifacts as (the download answers with the artifact's own type).
_ARTIFACT_MEDIA_TYPES = ("application/octet-stream", "application/gzip", "application/json", "text/markdown",
                         "text/plain")


@router.get("/{job_id}/artifacts/{name:path}", operation_id="downloadJobArtifact", response_class=Response,
            summary="Download one result file",
            response_description="the file; send Range: bytes=N- to resume an interrupted download",
            responses={200: {"content": {t: _BINARY for t in _ARTIFACT_MEDIA_TYPES},
                             "headers": {"ETag": {"description": "the file's sha256 in quotes",
                                                  "schema": {"type": "string"}}}},
                       206: {"description": "the requested byte range",
                             "content": {t: _BINARY for t in _ARTIFACT_MEDIA_TYPES},
                             "headers": {"Content-Range": {"description": "bytes <start>-<end>/<size>",
                                                           "schema": {"type": "string"}}}},
                       **contract.problems(401, 404, 416)})
def download_artifact(job_id: str, name: str, request: Request, db: Session = Depends(get_db),
                      store: ArtifactStore = Depends(get_store), tenant: str = Depends(get_tenant)):
    job = _get_job(db, tenant, job_id)
    # Looked up by exact name among this job's final rows: a name can never reach another path.
    a = db.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name,
                                         Artifact.final.is_(True)))
    if a is None:
        raise Problem(404, f"job {job_id} has no artifact named {name!r}", slug="not-found")
    filename = name.rsplit("/", 1)[-1]
    headers = {"ETag": f'"{a.sha256}"'} if a.sha256 else {}
    span = _requested_range(request.headers.get("range"), a.size_bytes)
    local = store.local_path(a.storage_key)
    if local is not None:  # Starlette serves the one range checked above (206) for files on disk
        return FileResponse(local, media_type=a.media_type, filename=filename, headers=headers)
    return _stream_remote(store, a, filename, headers, span)


def _requested_range(range_header: str | None, size: int) -> tuple[int, int] | None:
    """The one `bytes=start-[end]` or `bytes=-suffix` range asked for, as (start, end) inclusive;
    None without a Range header. Anything else is the documented 416 problem+json, for files on
    disk too: Starlette's FileResponse alone would answer a malformed range with a text/plain 400,
    an unsatisfiable one with a text/plain 416, and several with multipart/byteranges, none of
    which the document declares (tests/service/test_artifact_ranges.py)."""
    if not range_header:
        return None
    m = _RANGE.match(range_header.strip())
    if m is None or (m.group(1) == "" and m.group(2) == ""):
        raise Problem(416, f"Range: only one 'bytes=start-[end]' range is supported, got {range_header!r}",
                      slug="range-not-satisfiable", headers={"Content-Range": f"bytes */{size}"})
    if m.group(1) == "":  # bytes=-N: the last N bytes
        start, end = max(0, size - int(m.group(2))), size - 1
    else:
        start = int(m.group(1))
        end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
    if start > end or start >= size:
        raise Problem(416, f"Range: {range_header!r} is outside the file's {size} bytes",
                      slug="range-not-satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _stream_remote(store: ArtifactStore, a: Artifact, filename: str, headers: dict[str, str],
                   span: tuple[int, int] | None) -> StreamingResponse:
    """A file in a remote store, streamed in chunks; a range (`span`) resumes a download."""
    size = a.size_bytes
    headers = {**headers, "Content-Disposition": f'attachment; filename="{filename}"', "Accept-Ranges": "bytes"}
    start, end = span if span is not None else (0, size - 1)
    length = end - start + 1
    headers["Content-Length"] = str(length)
    status = 200
    if span is not None:
        headers["Content-Range"], status = f"bytes {start}-{end}/{size}", 206
    return StreamingResponse(store.iter_range(a.storage_key, start, length), status_code=status,
                             media_type=a.media_type, headers=headers)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
