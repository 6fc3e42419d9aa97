"""The response models are the routes' only way to build an answer (issue #15): building one
with a keyword it does not declare fails, so a field cannot reach a builder without reaching the
model (and so the document). Parsing an answer stays lenient, since api/client.py parses what a
newer server sends with these same models."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from api import automation_schemas, schemas


def _response_models(document: dict) -> list[str]:
    names = set()
    for item in document["paths"].values():
        for op in item.values():
            for resp in op["responses"].values():
                for media in resp.get("content", {}).values():
                    schema = media.get("schema", {})
                    ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
                    if ref:
                        names.add(ref.rsplit("/", 1)[-1])
    return sorted(names)


def _model(name: str):
    return getattr(schemas, name, None) or getattr(automation_schemas, name)


def test_every_response_model_refuses_an_undeclared_keyword(document):
    names = _response_models(document)
    assert {"Job", "Problem", "ScheduleOut", "WebhookDeliveryOut"} <= set(names)
    for name in names:
        model = _model(name)
        assert issubclass(model, schemas.ResponseModel), name
        example = document["components"]["schemas"][name]["examples"][0]
        model(**example)  # the documented example builds
        with pytest.raises(TypeError, match="undeclared_field"):
            model(**example, undeclared_field=1)


def test_parsing_an_answer_keeps_ignoring_fields_it_does_not_know(document):
    """What the client does with an answer from a newer server (which may have added fields)."""
    for name in _response_models(document):
        example = document["components"]["schemas"][name]["examples"][0]
        parsed = _model(name).model_validate({**example, "added_by_a_newer_server": 1})
        assert not hasattr(parsed, "added_by_a_newer_server"), name


def test_nested_models_refuse_too():
    with pytest.raises(TypeError, match="latency"):
        automation_schemas.WebhookAttemptOut(attempt=1, status_code=200, latency_ms=1.0, error=None,
                                             created_at="2026-01-15T03:00:00+00:00", latency=1.0)
    with pytest.raises(TypeError, match="bytes"):
        schemas.ModelFile(name="config.json", size=1, bytes=1)


def test_every_timestamp_in_an_answer_is_declared_a_date_time(document):
    """Generated clients type a `*_at` field as a datetime only when the document says
    `format: date-time`; the schedule and webhook answers once declared bare strings."""
    untyped = []
    for name in _response_models(document):
        for comp in _reachable(document, name):
            for prop, schema in document["components"]["schemas"][comp].get("properties", {}).items():
                options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
                if prop.endswith("_at") and any(s.get("format") != "date-time" for s in options):
                    untyped.append(f"{comp}.{prop}")
    assert not untyped, untyped


def _reachable(document: dict, name: str) -> set[str]:
    """`name` and every component schema its properties refer to."""
    seen, todo = set(), [name]
    while todo:
        comp = todo.pop()
        if comp not in seen:
            seen.add(comp)
            text = json.dumps(document["components"]["schemas"][comp])
            todo += re.findall(r'"#/components/schemas/([^"]+)"', text)
    return seen


def test_schedule_and_webhook_times_keep_their_wire_form():
    """Typed as datetimes, they are still sent as datetime.isoformat() in UTC ("+00:00", as when
    they were strings; the `schedule.run` webhook's data is this same dump), and parse either form."""
    berlin = datetime(2026, 1, 15, 4, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    run = automation_schemas.ScheduleRunOut(
        id="run_1", schedule_id="sch_1", due_at=berlin, trigger="cron", outcome="job_created", reason=None,
        job_id="job_1", source=None, missed=0, created_at=datetime(2026, 1, 15, 3, 0, 0, 5, tzinfo=timezone.utc))
    dumped = run.model_dump(mode="json")
    assert (dumped["due_at"], dumped["created_at"]) == ("2026-01-15T03:00:00+00:00", "2026-01-15T03:00:00.000005+00:00")
    assert json.loads(run.model_dump_json())["due_at"] == "2026-01-15T03:00:00+00:00"
    parsed = automation_schemas.ScheduleRunOut.model_validate({**dumped, "due_at": "2026-01-15T03:00:00Z"})
    assert parsed.due_at == berlin and parsed.due_at.tzinfo == timezone.utc
    with pytest.raises(ValidationError, match="timezone"):  # a naive time would be ambiguous on the wire
        automation_schemas.ScheduleRunOut.model_validate({**dumped, "due_at": "2026-01-15T03:00:00"})
