"""The response models are the routes' only way to build an answer (issue #15): building one
with a keyword it does not declare fails, so a field cannot reach a builder without reaching the
model (and so the document). Parsing an answer stays lenient, since api/client.py parses what a
newer server sends with these same models."""
from __future__ import annotations

import pytest

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
