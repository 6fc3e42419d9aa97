"""The event stream's blocks are declared in /openapi.json (x-itemSchema of text/event-stream), the
`end` event's data included: the final Job, or a JobGone when the job was deleted while it was
followed (it once fell back to {"status": "deleted"}, a status the schema does not have)."""
from __future__ import annotations

import json

import pytest
from jsonschema import ValidationError

from api import schemas
from api.routes import events

from .sse_contract import check_item, item_schema

JOB = schemas.Job.model_config["json_schema_extra"]["examples"][0]
EVENT = schemas.Event.model_config["json_schema_extra"]["examples"][0]


def _end(data: dict) -> dict:
    return {"event": "end", "id": "7", "data": json.dumps(data)}


def test_every_block_the_route_sends_is_declared(document):
    assert check_item(document, {"retry": events.RETRY_MS})["title"] == "RetryItem"
    assert check_item(document, {"event": "progress", "id": "7", "data": json.dumps(EVENT)})["title"] == "JobEventItem"
    status = {**EVENT, "kind": "status", "status": "running", "metrics": None}
    assert check_item(document, {"event": "status", "id": "8", "data": json.dumps(status)})["title"] == "JobEventItem"
    assert check_item(document, _end({**JOB, "status": "succeeded"}))["title"] == "EndItem"
    assert check_item(document, _end(events._gone(JOB["id"])))["title"] == "EndItem"


@pytest.mark.parametrize("item", [
    _end({"id": JOB["id"], "status": "deleted"}),                      # the old fallback: no such status
    _end({"id": JOB["id"], "reason": "vanished", "detail": "?"}),       # a reason the schema lacks
    {"event": "progress", "id": "7", "data": json.dumps({**EVENT, "kind": "log"})},
    {"event": "message", "id": "7", "data": json.dumps(EVENT)},        # an event name never sent
])
def test_blocks_outside_the_contract_are_refused(document, item):
    with pytest.raises(ValidationError):
        check_item(document, item)


def test_job_gone_is_a_documented_component_with_its_example(document):
    component = document["components"]["schemas"]["JobGone"]
    reason = component["properties"]["reason"]
    assert reason.get("enum", [reason.get("const")]) == ["deleted"] and component["required"] == ["id", "reason", "detail"]
    for example in component["examples"]:
        schemas.JobGone(**example)
    end = item_schema(document)["oneOf"][1]["properties"]["data"]["contentSchema"]
    assert {"$ref": "#/components/schemas/JobGone"} in end["anyOf"]
    assert "JobGone" in document["paths"]["/v1/jobs/{job_id}/events"]["get"]["description"]


def test_the_document_stays_a_valid_openapi_3_1_document(document):
    """The stream's blocks are declared under `x-itemSchema`: OpenAPI 3.1's Media Type object
    admits no `itemSchema` (3.2's name), and generators that validate (openapi-generator) would
    refuse the whole document."""
    from openapi_spec_validator import validate

    assert document["openapi"].startswith("3.1")
    validate(document)
