"""A webhook's event kinds are a closed enum in the document (requests and answers), and it is
the list of kinds the service really emits: a generated client gets a typed enum for
WebhookOut.events and WebhookDeliveryOut.event_type, not plain strings (issue #15)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from api import automation_schemas
from api.models import TERMINAL_STATUSES
from api.webhooks import EVENT_TYPES


def test_every_events_field_of_the_document_is_the_enum_of_emitted_kinds(document):
    schemas = document["components"]["schemas"]
    kinds = set(EVENT_TYPES)
    for name in ("WebhookCreate", "WebhookOut", "WebhookCreated"):
        assert set(schemas[name]["properties"]["events"]["items"].get("enum", ())) == kinds, name
    assert set(schemas["WebhookDeliveryOut"]["properties"]["event_type"].get("enum", ())) == kinds


def test_the_enum_is_what_the_service_emits():
    # webhooks.emit_job_status sends job.<status> for a terminal status; schedules.fire sends schedule.run.
    assert {f"job.{status}" for status in TERMINAL_STATUSES} | {"schedule.run"} == set(EVENT_TYPES)


def test_an_answer_cannot_carry_a_kind_outside_the_enum():
    example = automation_schemas.WebhookOut.model_config["json_schema_extra"]["examples"][0]
    automation_schemas.WebhookOut(**example)
    with pytest.raises(ValidationError, match="events"):
        automation_schemas.WebhookOut(**{**example, "events": ["job.exploded"]})
