"""Request and response bodies of /v1/schedules and /v1/webhooks (issue #14), as pydantic
models so the OpenAPI document describes exactly what is sent and answered."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from .webhooks import EVENT_TYPES

EventType = Literal["job.succeeded", "job.failed", "job.cancelled", "schedule.run"]
assert set(EventType.__args__) == set(EVENT_TYPES)


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
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

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=128)
    template: dict[str, Any] | None = None
    cron: str | None = Field(None, max_length=128)
    timezone: str | None = Field(None, max_length=64)
    on_new_version: bool | None = None
    paused: bool | None = None


class ScheduleRunOut(BaseModel):
    id: str
    schedule_id: str
    due_at: str
    trigger: Literal["cron", "new_version"]
    outcome: Literal["job_created", "skipped", "missed"]
    reason: str | None = Field(description="why no job was created (skipped / missed)")
    job_id: str | None
    source: str | None = Field(description="the model version (id) or hub revision the firing saw")
    missed: int = Field(description="earlier due times folded into this catch-up firing")
    created_at: str


class ScheduleOut(BaseModel):
    id: str
    name: str | None
    template: dict[str, Any]
    cron: str | None
    timezone: str
    on_new_version: bool
    paused: bool
    next_due_at: str | None
    created_at: str
    updated_at: str
    last_run: ScheduleRunOut | None


class ScheduleList(BaseModel):
    data: list[ScheduleOut]


class ScheduleRunList(BaseModel):
    data: list[ScheduleRunOut]
    next_cursor: str | None = None


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: HttpUrl = Field(description="http(s) URL receiving POSTs; must resolve to a public address")
    events: list[EventType] = Field(min_length=1)
    description: str | None = Field(None, max_length=255)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: str


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_...: the signing secret, shown only in this answer")


class WebhookList(BaseModel):
    data: list[WebhookOut]


class WebhookAttemptOut(BaseModel):
    attempt: int
    status_code: int | None
    latency_ms: float | None
    error: str | None
    created_at: str


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="the message id, sent as the webhook-id header")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: str | None
    created_at: str
    delivered_at: str | None
    payload: dict[str, Any]
    attempt_log: list[WebhookAttemptOut]


class WebhookDeliveryList(BaseModel):
    data: list[WebhookDeliveryOut]
