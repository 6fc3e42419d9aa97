"""Checks a block of the job event stream against what /openapi.json declares for it: the
text/event-stream media type's x-itemSchema (OpenAPI 3.2's itemSchema: one object per block:
event, id, data), and the JSON
inside `data` against the item's contentSchema (which jsonschema treats as a mere annotation,
so it is applied here)."""
from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

EVENTS = ("/v1/jobs/{job_id}/events", "get")


def item_schema(document: dict) -> dict:
    path, method = EVENTS
    return document["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]["x-itemSchema"]


def _validator(document: dict, schema: dict) -> Draft202012Validator:
    # $refs (#/components/schemas/...) resolve against the root, so the root carries the components.
    return Draft202012Validator({**schema, "components": document["components"]})


def check_item(document: dict, item: dict[str, Any]) -> dict:
    """Raises jsonschema.ValidationError unless `item` ({"event", "id", "data": the raw string}
    or {"retry": ms}) is a block the document declares; returns the alternative it matched."""
    declared = item_schema(document)
    _validator(document, declared).validate(item)
    alt = next(a for a in declared["oneOf"] if _validator(document, a).is_valid(item))
    data = alt["properties"].get("data")
    if data is not None:
        _validator(document, data["contentSchema"]).validate(json.loads(item["data"]))
    return alt
