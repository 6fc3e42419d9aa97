"""The OpenAPI document as a contract: stable operationIds, declared error statuses with the
Problem schema, and the document itself (served at /openapi.json).

operationIds are what generated clients name their functions after, so they must not change
when a Python function is renamed: a route either names its id explicitly or gets the
camelCase of its function name (create_job -> createJob). tests/contract/ pins them.
"""
from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from .problems import PROBLEM_MEDIA_TYPE
from .schemas import Event, JobGone, Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

# Why each status happens, for the descriptions in the document.
_WHY = {
    400: "malformed request",
    401: "missing, unknown or revoked API key",
    404: "no such resource in your tenant",
    409: "conflicts with the resource's state (e.g. an Idempotency-Key reused with another body, "
         "or cancelling a finished job)",
    411: "Content-Length required for uploads",
    413: "the upload exceeds your tenant's limit",
    416: "the Range header asks for bytes the file does not have",
    422: "invalid input; errors[] names each offending field",
    429: "too many active jobs or requests; retry after Retry-After seconds",
    503: "database or job queue unreachable; retry after Retry-After seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_CONTENT_RANGE = {"Content-Range": {"description": "bytes */<size>: the file's size", "schema": {"type": "string"}}}


def problem(status: int | str, description: str | None = None) -> dict[str, Any]:
    code = int(status) if str(status).isdigit() else None
    desc = description or (_WHY.get(code) if code else None) or (HTTPStatus(code).phrase if code else "error")
    out: dict[str, Any] = {"description": f"{desc} (problem+json)",
                           "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}}
    if code in (429, 503):
        out["headers"] = _RETRY_AFTER
    elif code == 416:  # routes/jobs.py sends it with every 416
        out["headers"] = _CONTENT_RANGE
    return out


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """responses= entries for a route's specific error statuses."""
    return {s: problem(s) for s in statuses}


# Declared on every operation: any other 4xx (e.g. 405) is still problem+json, any route can
# answer 503 while a dependency is down (api/outage.py), and an unexpected failure is a 500
# problem+json too (api/problems.py), so a generated client parses every error as a Problem.
APP_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": problem("4XX", "client error"),
    503: problem(503),
    "5XX": problem("5XX", "server error; the body's detail says nothing internal, the server log has it"),
}


def operation_id(route: APIRoute) -> str:
    head, *rest = route.name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _referenced_components() -> dict[str, Any]:
    """Schemas the document refers to by $ref without a route's response_model naming them
    (errors, and what the event stream's items hold: routes/events.SSE_ITEM_SCHEMA)."""
    out: dict[str, Any] = {}
    for model in (Problem, Event, JobGone):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _examples_with_nulls(schemas: dict[str, Any]) -> None:
    """FastAPI encodes the document with exclude_none, which also strips the nulls out of the
    models' examples: `"reason": null` of a required-but-nullable field disappears and the example
    no longer validates against its own schema. Put each model's examples back as written."""
    from . import automation_schemas, schemas as response_models

    for module in (response_models, automation_schemas):
        for name, obj in vars(module).items():
            if not (isinstance(obj, type) and issubclass(obj, BaseModel)) or name not in schemas:
                continue
            extra = obj.model_config.get("json_schema_extra")
            if isinstance(extra, dict) and extra.get("examples"):
                schemas[name]["examples"] = json.loads(json.dumps(extra["examples"], default=str))


def _mark_binary_uploads(schemas: dict[str, Any]) -> None:
    """FastAPI describes an UploadFile the OpenAPI 3.1 way (contentMediaType) only; client
    generators (openapi-python-client, openapi-generator) recognise a file by format: binary."""
    for schema in schemas.values():
        for prop in schema.get("properties", {}).values():
            if prop.get("type") == "string" and prop.get("contentMediaType") == "application/octet-stream":
                prop["format"] = "binary"


def _declare_validation_errors(paths: dict[str, Any]) -> None:
    """FastAPI answers 422 (RequestValidationError -> problem+json, api/problems.py) to any
    operation that reads a body, query or header parameter, whether or not the route listed it:
    declare it there, so a generated client has a typed Problem for it instead of an
    'unexpected status'."""
    for item in paths.values():
        for op in item.values():
            reads_input = "requestBody" in op or any(p.get("in") in ("query", "header")
                                                    for p in op.get("parameters", []))
            if reads_input and "422" not in op.get("responses", {}):
                op.setdefault("responses", {})["422"] = problem(422)


def install(app: FastAPI) -> None:
    """Serve a document that carries the Problem schema the responses refer to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes, tags=TAGS, servers=app.servers)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(_referenced_components())
            _mark_binary_uploads(schemas)
            _examples_with_nulls(schemas)
            _declare_validation_errors(doc.get("paths", {}))
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


TAGS = [
    {"name": "jobs", "description": "Submit a compression, follow it, cancel it, download the result."},
    {"name": "events", "description": "A job's progress as Server-Sent Events or a JSON list."},
    {"name": "models", "description": "Upload Hugging Face model folders (safetensors only)."},
    {"name": "datasets", "description": "Upload labelled CSV/JSONL datasets; list the built-in tasks."},
    {"name": "health", "description": "Liveness and readiness probes."},
]
