"""GET /v1/jobs/{id}/events: a job's events as Server-Sent Events, or as a JSON list.

Wire format (one block per event; `id` is the job_events seq, gap-free per job):

    event: progress | status        id: <seq>      data: {"seq", "kind", "stage", "fraction",
                                                          "step", "metrics", "status", ...}
    event: end                      id: <last seq> data: the job, as GET /v1/jobs/{id}; or, if
                                                   its row was deleted meanwhile, a JobGone
                                                   {"id", "reason": "deleted", "detail"}

`end` closes the stream; /openapi.json declares every block (SSE_ITEM_SCHEMA). A client that
reconnects with `Last-Event-ID: N` (or `?after=N`) gets the events with seq > N exactly once; a
client arriving after the job ended gets the whole history, then `end`. `: ping` comments keep
idle connections open through proxies. The replay/live/dedupe logic lives in api/event_bus.py;
this module only reads rows.
"""
from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Literal

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from .. import contract, event_bus, schemas
from ..db import read_scope
from ..jobstore import event_to_dict
from ..models import TERMINAL_STATUSES, Artifact, Job, JobEvent
from ..problems import Problem, field_problem
from ..settings import Settings
from ..tenancy import get_tenant

router = APIRouter(tags=["events"])
log = logging.getLogger("vtrans.api")
# What api/outage.py answers 503 for before a response has started.
DB_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)

# Tells EventSource clients how long to wait before reconnecting (ms).
RETRY_MS = 2000
# A comment line: ignored by clients, keeps proxies from closing an idle stream.
PING = b": ping\n\n"


def public_event(job_id: str, ev: dict[str, Any]) -> dict[str, Any]:
    """The client-facing form of an event (schemas.Event), the same for DB rows and live pub/sub
    payloads; unset fields are left out."""
    metrics = ev.get("metrics") or {}
    step = metrics.get("step") if ev.get("kind") == "progress" else None  # beside stage and fraction
    fields = {k: v for k, v in ev.items() if k in schemas.Event.model_fields and v is not None}
    event = schemas.Event(**{"job_id": job_id, **fields, "step": step if isinstance(step, int) else None})
    return event.model_dump(mode="json", exclude_none=True)


def _job_state(settings: Settings, tenant: str, job_id: str) -> dict[str, Any] | None:
    from .jobs import job_to_dict  # the service's serializer: `end` carries what GET returns

    with read_scope(settings.db_url) as s:
        job = s.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant))
        if job is None:
            return None
        artifacts = []
        if job.status == "succeeded":
            artifacts = list(s.scalars(select(Artifact).where(Artifact.job_id == job.id, Artifact.final.is_(True))
                                       .order_by(Artifact.name)).all())
        return job_to_dict(job, artifacts)


def _events_since(settings: Settings, tenant: str, job_id: str, after: int) -> tuple[list[dict], bool]:
    """Events with seq > after, and whether the job had finished. The status is read FIRST:
    a terminal status is committed together with its event, so when we see "finished" the
    events query (a later statement) sees every event of the job."""
    with read_scope(settings.db_url) as s:
        status = s.scalar(select(Job.status).where(Job.id == job_id, Job.tenant_id == tenant))
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after)
                         .order_by(JobEvent.seq)).all()
        return [event_to_dict(r) for r in rows], status is None or status in TERMINAL_STATUSES


def _parse_after(last_event_id: str | None, after: int | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        try:
            value = int(last_event_id.strip())
        except ValueError:
            raise field_problem(422, "Last-Event-ID", "must be an event id sent by this stream (an integer)") from None
        if value < 0:
            raise field_problem(422, "Last-Event-ID", "must not be negative")
        return value
    return after or 0


# ?format=: an enum in the document, so generated clients get the choices; FastAPI refuses any
# other value with the 422 problem+json naming `format` (api/problems.py), as this route's own
# check did before the parameter was typed.
EventsFormat = Literal["json", "sse"]


def _wants_json(request: Request, fmt: EventsFormat | None) -> bool:
    if fmt is not None:
        return fmt == "json"
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


def _sse(event: str, data: Any, event_id: int | None) -> bytes:
    return format_sse_event(data_str=json.dumps(data, default=str, separators=(",", ":")), event=event,
                            id=None if event_id is None else str(event_id))


def _json_data(schema: dict[str, Any]) -> dict[str, Any]:
    """An SSE `data` field that holds a JSON document of `schema`."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


_REF = "#/components/schemas/"
# Every block the stream sends, described the way OpenAPI 3.2 describes text/event-stream items:
# one object per block with its `event`, `id` and `data`, the JSON inside `data` given by
# contentSchema. The document is OpenAPI 3.1.0, whose Media Type object admits no `itemSchema`
# (openapi-spec-validator and openapi-generator refuse the document), so it is published under
# the extension name `x-itemSchema`. tests/live/test_event_stream_contract.py checks real
# streams against it, `end` after a deleted job included.
SSE_ITEM_SCHEMA: dict[str, Any] = {"oneOf": [
    {"title": "JobEventItem", "type": "object", "required": ["event", "id", "data"], "properties": {
        "event": {"type": "string", "enum": ["progress", "status"], "description": "the event's kind"},
        "id": {"type": "string", "description": "the event's seq; send it as Last-Event-ID to resume after it"},
        "data": _json_data({"$ref": _REF + "Event"})}},
    {"title": "EndItem", "type": "object", "required": ["event", "id", "data"], "properties": {
        "event": {"type": "string", "const": "end", "description": "the last block: the stream closes"},
        "id": {"type": "string", "description": "the seq of the last event sent"},
        "data": _json_data({"anyOf": [{"$ref": _REF + "Job"}, {"$ref": _REF + "JobGone"}],
                            "description": "the job as getJob returns it; JobGone if it was deleted meanwhile"})}},
    {"title": "RetryItem", "type": "object", "required": ["retry"], "properties": {
        "retry": {"type": "integer", "minimum": 0, "description": "milliseconds to wait before reconnecting"}}},
]}


def _gone(job_id: str) -> dict[str, Any]:
    return schemas.JobGone(id=job_id, reason="deleted",
                           detail=f"job {job_id} was deleted while its events were followed").model_dump(mode="json")


_EVENTS_DOC = """A job's events, oldest first: `progress` and `status` events, then `end` (data: the job, as
getJob returns it, or a JobGone if the job was deleted meanwhile) which closes the stream. Each
event's SSE `id` is its seq: reconnect with `Last-Event-ID` (or `?after=`) to get exactly the
events you missed. `Accept: application/json`
or `?format=json` returns the history so far as a JSON list instead."""


@router.get("/v1/jobs/{job_id}/events", operation_id="streamJobEvents", summary="Follow a job's events",
            description=_EVENTS_DOC, response_class=StreamingResponse,
            responses={200: {"description": "text/event-stream, or the events as JSON",
                             # JSON first: generated clients type the response by its first media type.
                             "content": {"application/json": {"schema": {
                                             "type": "array", "items": {"$ref": "#/components/schemas/Event"}}},
                                         "text/event-stream": {"schema": {"type": "string"},
                                                               "x-itemSchema": SSE_ITEM_SCHEMA}}},
                       **contract.problems(401, 404, 422)})
async def job_events(job_id: str, request: Request,
                     format: EventsFormat | None = Query(None, description="json: the history as a JSON list; sse: "
                                                                         "the stream, whatever Accept says"),
                     after: int | None = Query(None, ge=0, description="only events with seq > after"),
                     last_event_id: str | None = Header(None, alias="Last-Event-ID"),
                     tenant: str = Depends(get_tenant)):
    settings: Settings = request.app.state.settings
    start = _parse_after(last_event_id, after)
    as_json = _wants_json(request, format)
    state = await to_thread.run_sync(_job_state, settings, tenant, job_id)
    if state is None:
        raise Problem(404, f"no job with id {job_id!r}", slug="not-found")

    if as_json:
        events, _ = await to_thread.run_sync(_events_since, settings, tenant, job_id, start)
        return JSONResponse([public_event(job_id, e) for e in events])

    async def fetch(after_seq: int) -> tuple[list[dict], bool]:
        return await to_thread.run_sync(_events_since, settings, tenant, job_id, after_seq)

    async def stream() -> AsyncIterator[bytes]:
        yield f"retry: {RETRY_MS}\n\n".encode()
        last = start
        try:
            async for ev in event_bus.follow(job_id, start, fetch, url=event_bus.bus_url(settings)):
                if ev is None:
                    yield PING
                    continue
                last = ev["seq"]
                yield _sse(ev.get("kind") or "progress", public_event(job_id, ev), last)
            final = await to_thread.run_sync(_job_state, settings, tenant, job_id)
        except DB_ERRORS as exc:
            # The 200 is already sent, so no 503 can be: close the stream instead of an ASGI
            # error (seen in the load shakedown when the pool timed out). The client reconnects
            # after RETRY_MS with Last-Event-ID and misses nothing.
            log.warning("event stream of %s closed, database unavailable: %s", job_id, str(exc).splitlines()[0][:200])
            return
        yield _sse("end", final if final is not None else _gone(job_id), last)

    # StreamingResponse cancels the generator when the client disconnects, which closes the
    # subscription (event_bus.follow's finally).
    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

