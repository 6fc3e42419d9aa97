"""Request and response bodies of /v1/schedules and /v1/webhooks (issue #14), as pydantic
models so the OpenAPI document describes exactly what is sent and answered."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl, PlainSerializer, WithJsonSchema

from .schemas import ResponseModel
from .webhooks import EVENT_TYPES

# The kinds of event the service emits (api/webhooks.EVENT_TYPES): the enum of a webhook's
# `events` in requests and answers and of a delivery's `event_type`, so generated clients get a
# closed type (adding a kind is then a contract change, tests/contract/test_compat.py).
EventType = Literal["job.succeeded", "job.failed", "job.cancelled", "schedule.run"]
assert set(EventType.__args__) == set(EVENT_TYPES)


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


# A timestamp of these answers: a timezone-aware datetime, kept in UTC, declared `format:
# date-time` like the Job's. On the wire it stays datetime.isoformat() ("...+00:00"), what these
# routes sent when the fields were plain strings, not pydantic's "...Z" (the Job's form): the
# `schedule.run` webhook's data is run_out's JSON dump, and a receiver may compare or parse those
# strings with a pre-3.11 fromisoformat that refuses "Z". WithJsonSchema keeps the format in the
# response (serialization) schema, which PlainSerializer alone reduces to a bare string.
UTCTime = Annotated[AwareDatetime, AfterValidator(_utc),
                    PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
                    WithJsonSchema({"type": "string", "format": "date-time"})]

# Examples for the document (tests/contract checks each one validates against its model).
_NOW = "2026-01-15T03:00:00+00:00"
_RUN = {"id": "run_5c2e9a0b1d3f4e6a7b8c", "schedule_id": "sch_1a2b3c4d5e6f70819203", "due_at": _NOW,
        "trigger": "cron", "outcome": "job_created", "reason": None, "job_id": "job_8f2c1d0e9a7b6c5d4e3f",
        "source": "mdl_0a1b2c3d4e5f60718293", "missed": 0, "created_at": _NOW}
_SCHEDULE = {"id": "sch_1a2b3c4d5e6f70819203", "name": "weekly support-bert",
             "template": {"model": "support-bert", "dataset": "ds_9f8e7d6c5b4a39281706",
                          "budget": {"kind": "flops", "target": 0.5}, "method": "fast"},
             "cron": "0 3 * * 1", "timezone": "Europe/Berlin", "on_new_version": True, "paused": False,
             "next_due_at": "2026-01-19T02:00:00+00:00", "created_at": _NOW, "updated_at": _NOW, "last_run": _RUN}
_WEBHOOK = {"id": "wh_4d5e6f708192a3b4c5d6", "url": "https://ci.example.com/hooks/vtrans",
            "events": ["job.failed", "job.succeeded"], "description": "CI", "created_at": _NOW}
_DELIVERY = {"id": "msg_2b3c4d5e6f708192a3b4", "event_type": "job.succeeded", "status": "delivered", "attempts": 2,
             "next_attempt_at": None, "created_at": _NOW, "delivered_at": "2026-01-15T03:00:06+00:00",
             "payload": {"type": "job.succeeded", "timestamp": _NOW,
                         "data": {"id": "job_8f2c1d0e9a7b6c5d4e3f", "status": "succeeded"}},
             "attempt_log": [{"attempt": 1, "status_code": 502, "latency_ms": 41.0, "error": None, "created_at": _NOW},
                             {"attempt": 2, "status_code": 200, "latency_ms": 38.5, "error": None,
                              "created_at": "2026-01-15T03:00:06+00:00"}]}


def _examples(*values: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(values)})


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {k: _SCHEDULE[k] for k in ("name", "template", "cron", "timezone", "on_new_version")}]})
    name: str | None = Field(None, max_length=128, description="a label for people")
    template: dict[str, Any] = Field(description="a job request (as POST /v1/jobs takes); `model` may be a model "
                                                 "name (its latest version when the schedule fires) or a hub ID")
    cron: str | None = Field(None, max_length=128, description="5-field cron expression, e.g. '0 3 * * 1'")
    timezone: str = Field("UTC", max_length=64, description="IANA time zone the cron expression is read in")
    on_new_version: bool = Field(False, description="fire whenever a new version of the template's model name "
                                                    "is uploaded")
    paused: bool = False


class ScheduleUpdate(BaseModel):
    """Only the fields sent change; `cron: null` removes the timetable."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"cron": "0 4 * * *", "paused": False}]})
    name: str | None = Field(None, max_length=128)
    template: dict[str, Any] | None = None
    cron: str | None = Field(None, max_length=128)
    timezone: str | None = Field(None, max_length=64)
    on_new_version: bool | None = None
    paused: bool | None = None


class ScheduleRunOut(ResponseModel):
    model_config = _examples(_RUN)
    id: str
    schedule_id: str
    due_at: UTCTime
    trigger: Literal["cron", "new_version"]
    outcome: Literal["job_created", "skipped", "missed"]
    reason: str | None = Field(description="why no job was created (skipped / missed)")
    job_id: str | None
    source: str | None = Field(description="the model version (id) or hub revision the firing saw")
    missed: int = Field(description="earlier due times folded into this catch-up firing")
    created_at: UTCTime


class ScheduleOut(ResponseModel):
    model_config = _examples(_SCHEDULE)
    id: str
    name: str | None
    template: dict[str, Any]
    cron: str | None
    timezone: str
    on_new_version: bool
    paused: bool
    next_due_at: UTCTime | None
    created_at: UTCTime
    updated_at: UTCTime
    last_run: ScheduleRunOut | None


class ScheduleList(ResponseModel):
    model_config = _examples({"data": [_SCHEDULE]})
    data: list[ScheduleOut]


class ScheduleRunList(ResponseModel):
    model_config = _examples({"data": [_RUN], "next_cursor": None})
    data: list[ScheduleRunOut]
    next_cursor: str | None = None


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {k: _WEBHOOK[k] for k in ("url", "events", "description")}]})
    url: HttpUrl = Field(description="http(s) URL receiving POSTs; must resolve to a public address")
    events: list[EventType] = Field(min_length=1)
    description: str | None = Field(None, max_length=255)


class WebhookOut(ResponseModel):
    model_config = _examples(_WEBHOOK)
    id: str
    url: str
    events: list[EventType]
    description: str | None
    created_at: UTCTime


class WebhookCreated(WebhookOut):
    model_config = _examples({**_WEBHOOK, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    secret: str = Field(description="whsec_...: the signing secret, shown only in this answer")


class WebhookList(ResponseModel):
    model_config = _examples({"data": [_WEBHOOK]})
    data: list[WebhookOut]


class WebhookAttemptOut(ResponseModel):
    attempt: int
    status_code: int | None
    latency_ms: float | None
    error: str | None
    created_at: UTCTime


class WebhookDeliveryOut(ResponseModel):
    model_config = _examples(_DELIVERY)
    id: str = Field(description="the message id, sent as the webhook-id header")
    event_type: EventType
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: UTCTime | None
    created_at: UTCTime
    delivered_at: UTCTime | None
    payload: dict[str, Any]
    attempt_log: list[WebhookAttemptOut]


class WebhookDeliveryList(ResponseModel):
    model_config = _examples({"data": [_DELIVERY]})
    data: list[WebhookDeliveryOut]
