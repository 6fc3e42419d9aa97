"""The OpenAPI document is a contract with every generated client: it may grow, not break.

The committed snapshot (openapi.snapshot.json) is the last published document. A change that
removes a field, renames an operation, adds an enum value to an answer, lets an answer's field
be null or absent, or makes a request stricter (e.g. drops an enum value or the null it
accepted) fails here, naming each break (compat.py). To
change the contract on purpose, regenerate the snapshot and commit it:

    VTRANS_UPDATE_OPENAPI_SNAPSHOT=1 pytest tests/contract/test_compat.py
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from .compat import breaking_changes

SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")
OPERATIONS = {"createJob", "getJob", "listJobs", "cancelJob", "streamJobEvents", "listJobArtifacts",
              "downloadJobArtifact", "uploadModel", "getModel", "listModels", "uploadDataset", "getDataset",
              "listDatasets", "getHealth", "getReadiness"}


def test_document_keeps_every_published_operation_and_field(document):
    if os.environ.get("VTRANS_UPDATE_OPENAPI_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    published = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    breaks = breaking_changes(published, document)
    assert not breaks, ("the OpenAPI document breaks existing clients:\n  " + "\n  ".join(breaks) +
                        "\n(if intended: VTRANS_UPDATE_OPENAPI_SNAPSHOT=1 pytest tests/contract/test_compat.py)")


def test_operations_have_stable_ids_models_and_problems(document):
    ops = {op["operationId"]: (path, method, op) for path, item in document["paths"].items()
           for method, op in item.items()}
    assert OPERATIONS <= set(ops), OPERATIONS - set(ops)
    schemas = document["components"]["schemas"]
    assert {"Job", "JobList", "Model", "Dataset", "Event", "Artifact", "ArtifactList", "Problem", "Health"} <= set(schemas)
    assert {"id", "status", "progress", "request", "artifacts"} <= set(schemas["Job"]["properties"])
    assert "next_cursor" in schemas["JobList"]["properties"]
    assert {"sha256", "size", "name", "url"} <= set(schemas["Artifact"]["properties"])
    for op_id, (path, method, op) in ops.items():
        if not path.startswith("/v1/"):
            continue
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert ok, op_id
        for status in ok:
            content = op["responses"][status].get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            if schema.get("format") != "binary" and "application/json" in content:  # typed, never a bare object
                assert "$ref" in schema or "$ref" in schema.get("items", {}), op_id
        assert "401" in op["responses"], f"{op_id} does not declare 401"
        assert {"4XX", "5XX"} <= set(op["responses"]), f"{op_id}: an error status without its Problem schema"
        for status, resp in op["responses"].items():
            if status[0] in "45":
                assert resp["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    for name in ("Job", "Model", "Dataset", "Event", "Problem", "JobRequest"):
        assert schemas[name].get("examples"), f"{name} has no example"


def _without(doc: dict, *path: str) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


@pytest.mark.parametrize("change, expected", [
    (lambda d: _without(d, "components", "schemas", "Job", "properties", "progress"), "progress: removed"),
    (lambda d: _without(d, "components", "schemas", "Artifact", "properties", "sha256"), "sha256: removed"),
    (lambda d: _rename_operation(d, "getJob", "get_job_v1_jobs__job_id__get"), "getJob"),
    (lambda d: _require(d, "JobRequest", "options"), "options: newly required"),
    (lambda d: _retype(d, "Job", "attempts", "string"), "attempts: type changed"),
])
def test_compat_check_catches_breaking_changes(document, change, expected):
    breaks = breaking_changes(document, change(document))
    assert any(expected in b for b in breaks), breaks


def test_additions_are_not_breaking(document):
    grown = copy.deepcopy(document)
    grown["components"]["schemas"]["Job"]["properties"]["future_field"] = {"type": "string"}
    grown["components"]["schemas"]["JobRequest"]["properties"]["future_option"] = {"type": "string"}
    grown["paths"]["/v1/future"] = {"get": {"operationId": "listFutureThings", "responses": {}}}
    assert breaking_changes(document, grown) == []


def _rename_operation(doc: dict, old: str, new: str) -> dict:
    doc = copy.deepcopy(doc)
    for item in doc["paths"].values():
        for op in item.values():
            if op.get("operationId") == old:
                op["operationId"] = new
    return doc


def _require(doc: dict, schema: str, field: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["components"]["schemas"][schema]["required"].append(field)
    return doc


def _retype(doc: dict, schema: str, field: str, new_type: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["components"]["schemas"][schema]["properties"][field] = {"type": new_type}
    return doc


def test_budget_kinds_are_the_ones_the_core_accepts(document):
    """The request's and the Job's budget kinds follow vtrans_core: a kind the core accepts but the
    Job model lacked made every read of such a job a 500."""
    from vtrans_core.budget import BUDGET_KINDS

    schemas = document["components"]["schemas"]
    assert set(schemas["JobRequest"]["properties"]["budget"]["properties"]["kind"]["enum"]) == set(BUDGET_KINDS)
    assert set(schemas["Budget"]["properties"]["kind"]["enum"]) == set(BUDGET_KINDS)


def test_operations_that_read_input_declare_422(document):
    """FastAPI's own validation (a bad query value, a body that does not parse) answers 422 on any
    operation reading a body, query or header parameter: each of them declares it."""
    missing = [op["operationId"] for item in document["paths"].values() for op in item.values()
               if ("requestBody" in op or any(p["in"] in ("query", "header") for p in op.get("parameters", [])))
               and "422" not in op["responses"]]
    assert not missing, missing


def test_every_response_model_has_an_example_that_it_accepts(document):
    """Each JSON body an operation answers with is documented with an example, and the example is
    one the pydantic model that builds the answer accepts (so the two cannot drift apart)."""
    from api import automation_schemas, schemas as models

    names = set()
    for item in document["paths"].values():
        for op in item.values():
            for status, resp in op["responses"].items():
                schema = resp.get("content", {}).get("application/json", {}).get("schema", {})
                ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
                if ref:
                    names.add(ref.rsplit("/", 1)[-1])
    components = document["components"]["schemas"]
    missing = sorted(n for n in names if not components[n].get("examples"))
    assert not missing, f"response schemas without examples: {missing}"
    for name in sorted(names):
        model = getattr(models, name, None) or getattr(automation_schemas, name)
        for example in components[name]["examples"]:
            model.model_validate(example)


def test_every_json_request_body_has_an_example_that_it_accepts(document):
    """What an operation reads is documented with an example too (issue #15: every operation
    "with examples"), one the pydantic model that parses the request accepts."""
    from api import automation_schemas, job_requests

    names = {op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
             for item in document["paths"].values() for op in item.values()
             if "application/json" in op.get("requestBody", {}).get("content", {})}
    assert {"JobRequest", "ScheduleCreate", "ScheduleUpdate", "WebhookCreate"} <= names, names
    components = document["components"]["schemas"]
    assert not [n for n in sorted(names) if not components[n].get("examples")], "request bodies without examples"
    for name in sorted(names):
        model = getattr(job_requests, name, None) or getattr(automation_schemas, name)
        for example in components[name]["examples"]:
            model.model_validate(example)


# ---------------------------------------------------------------- enums, on small documents

def _doc(out: dict, body: dict | None = None, params: list[dict] | None = None) -> dict:
    """One operation answering `out` (schema Out), reading `body` (schema In) and `params`."""
    op: dict = {"operationId": "op", "parameters": params or [], "responses": {"200": {
        "description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Out"}}}}}}
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/In"}}}}
    return {"paths": {"/x": {"post": op}}, "components": {"schemas": {"Out": out, "In": body or {}, "Sub": {
        "type": "object", "properties": {"kind": {"type": "string", "enum": ["a", "b"]}, "note": {"type": "string"}}}}}}


def _obj(**props: dict) -> dict:
    return {"type": "object", "properties": props}


def _param(schema: dict, required: bool = False) -> list[dict]:
    return [{"in": "query", "name": "q", "required": required, "schema": schema}]


AB = {"type": "string", "enum": ["a", "b"]}
ABC = {"type": "string", "enum": ["a", "b", "c"]}
A = {"type": "string", "enum": ["a"]}
STR = {"type": "string"}
NULL = {"type": "null"}
SUB = {"$ref": "#/components/schemas/Sub"}


def _with_sub_kind(doc: dict, enum: list) -> dict:
    doc["components"]["schemas"]["Sub"]["properties"]["kind"]["enum"] = enum
    return doc


@pytest.mark.parametrize("old, new, expected", [
    # answers: an enum value a client was not generated with fails to parse
    (_doc(_obj(s=AB)), _doc(_obj(s=ABC)), "op 200.s: enum values ['c'] added to a response"),
    (_doc(_obj(s={"anyOf": [AB, NULL]})), _doc(_obj(s={"anyOf": [ABC, NULL]})), "op 200.s: enum values ['c']"),
    (_doc(_obj(s={"type": "array", "items": AB})), _doc(_obj(s={"type": "array", "items": ABC})),
     "op 200.s[]: enum values ['c']"),
    (_doc(_obj(s={"type": "string", "const": "a"})), _doc(_obj(s=AB)), "op 200.s: enum values ['b']"),
    (_doc(_obj(s=AB)), _doc(_obj(s=STR)), "op 200.s: no longer limited to the enum values ['a', 'b']"),
    (_doc(_obj(s={"anyOf": [SUB, NULL]})), _with_sub_kind(_doc(_obj(s={"anyOf": [SUB, NULL]})), ["a", "b", "c"]),
     "op 200.s.kind: enum values ['c']"),
    (_doc(_obj(s={"type": "object", "additionalProperties": AB})),
     _doc(_obj(s={"type": "object", "additionalProperties": ABC})), "op 200.s{}: enum values ['c']"),
    # an optional nested object is compared like a required one
    (_doc(_obj(s={"anyOf": [SUB, NULL]})),
     _without(_doc(_obj(s={"anyOf": [SUB, NULL]})), "components", "schemas", "Sub", "properties", "note"),
     "op 200.s.note: removed"),
    # requests: a value a client was generated with may be sent
    (_doc(_obj(), _obj(s=AB)), _doc(_obj(), _obj(s=A)), "op request.s: enum values ['b'] no longer accepted"),
    (_doc(_obj(), _obj(s={"type": "array", "items": AB})), _doc(_obj(), _obj(s={"type": "array", "items": A})),
     "op request.s[]: enum values ['b'] no longer accepted"),
    (_doc(_obj(), _obj(s={"anyOf": [{"type": "array", "items": AB}, NULL]})),
     _doc(_obj(), _obj(s={"anyOf": [{"type": "array", "items": A}, NULL]})), "op request.s[]: enum values ['b']"),
    (_doc(_obj(), _obj(s=STR)), _doc(_obj(), _obj(s=AB)), "op request.s: now limited to the enum values"),
    (_doc(_obj(), params=_param(AB)), _doc(_obj(), params=_param(A)),
     "op parameter query:q: enum values ['b'] no longer accepted"),
    (_doc(_obj(), params=_param({"type": "string", "pattern": "^(a|b|c)$"})), _doc(_obj(), params=_param(AB)),
     "op parameter query:q: enum values ['c'] no longer accepted"),
    (_doc(_obj(), params=_param({"type": "string", "pattern": "^a.*$"})), _doc(_obj(), params=_param(AB)),
     "op parameter query:q: now limited to the enum values"),
    (_doc(_obj(), params=_param(STR)), _doc(_obj(), params=_param(STR, required=True)),
     "operation op: parameter query:q newly required"),
])
def test_enum_and_nested_changes_that_break_clients(old, new, expected):
    breaks = breaking_changes(old, new)
    assert any(expected in b for b in breaks), breaks


@pytest.mark.parametrize("old, new", [
    (_doc(_obj(s=ABC)), _doc(_obj(s=AB))),                      # an answer using fewer values
    (_doc(_obj(s=STR)), _doc(_obj(s=AB))),                      # an answer getting narrower
    (_doc(_obj(), _obj(s=AB)), _doc(_obj(), _obj(s=ABC))),      # a request accepting more
    (_doc(_obj(), _obj(s=AB)), _doc(_obj(), _obj(s=STR))),      # a request accepting any string
    (_doc(_obj(), params=_param(A)), _doc(_obj(), params=_param(ABC))),
    # a parameter whose pattern already allowed only these words, declared as their enum
    (_doc(_obj(), params=_param({"type": "string", "pattern": "^(a|b)$"})), _doc(_obj(), params=_param(AB))),
])
def test_enum_changes_that_keep_clients_working(old, new):
    assert breaking_changes(old, new) == []


# ---------------------------------------------------------------- nullability and presence

OPT_STR = {"anyOf": [STR, NULL]}   # pydantic's `str | None`


def _required(**props: dict) -> dict:
    return {**_obj(**props), "required": sorted(props)}


@pytest.mark.parametrize("old, new, expected", [
    # answers: a typed client generated when the field could not be null has no place for null
    (_doc(_obj(s=STR)), _doc(_obj(s=OPT_STR)), "op 200.s: may now be null"),
    (_doc(_obj(s=STR)), _doc(_obj(s={"type": ["string", "null"]})), "op 200.s: may now be null"),
    (_doc(_obj(s=STR)), _doc(_obj(s={"type": "string", "nullable": True})), "op 200.s: may now be null"),
    (_doc(_obj(s=AB)), _doc(_obj(s={"type": "string", "enum": ["a", "b", None]})), "op 200.s: may now be null"),
    (_doc(_obj(s=SUB)), _doc(_obj(s={"anyOf": [SUB, NULL]})), "op 200.s: may now be null"),
    (_doc(_obj(s={"type": "array", "items": STR})), _doc(_obj(s={"type": "array", "items": OPT_STR})),
     "op 200.s[]: may now be null"),
    (_doc(_required(s=STR)), _doc(_obj(s=STR)), "op 200.s: no longer always present"),
    (_doc(_obj(s=STR)), _doc(_obj(s={})), "op 200.s: type changed from ['string'] to ['any']"),
    # requests: a client generated when null was accepted may send it
    (_doc(_obj(), _obj(s=OPT_STR)), _doc(_obj(), _obj(s=STR)), "op request.s: no longer accepts ['null']"),
    (_doc(_obj(), _obj(s={"type": ["string", "null"]})), _doc(_obj(), _obj(s=STR)),
     "op request.s: no longer accepts ['null']"),
    (_doc(_obj(), _obj(s={"anyOf": [SUB, NULL]})), _doc(_obj(), _obj(s=SUB)), "op request.s: no longer accepts ['null']"),
    (_doc(_obj(), params=_param(OPT_STR)), _doc(_obj(), params=_param(STR)),
     "op parameter query:q: no longer accepts ['null']"),
    (_doc(_obj(), _obj(s={})), _doc(_obj(), _obj(s=STR)), "op request.s: took any value, now only ['string']"),
])
def test_nullability_and_presence_changes_that_break_clients(old, new, expected):
    breaks = breaking_changes(old, new)
    assert any(expected in b for b in breaks), breaks


@pytest.mark.parametrize("old, new", [
    (_doc(_obj(s=OPT_STR)), _doc(_obj(s=STR))),                                # an answer never null any more
    (_doc(_obj(s=STR)), _doc(_required(s=STR))),                               # ... or always present
    (_doc(_obj(s={"anyOf": [AB, NULL]})), _doc(_obj(s={"type": ["string", "null"], "enum": ["a", "b", None]}))),
    (_doc(_obj(), _obj(s=STR)), _doc(_obj(), _obj(s=OPT_STR))),                # a request accepting null too
    (_doc(_obj(), _obj(s=STR)), _doc(_obj(), _obj(s={"type": "string", "nullable": True}))),
    (_doc(_obj(), _obj(s=STR)), _doc(_obj(), _obj(s={}))),                     # ... or any value
    (_doc(_obj(), params=_param(STR)), _doc(_obj(), params=_param(OPT_STR))),
])
def test_nullability_changes_that_keep_clients_working(old, new):
    assert breaking_changes(old, new) == []


# ---------------------------------------------------------------- event streams (x-itemSchema)

def _block(title: str, events: list[str], data: dict) -> dict:
    return {"title": title, "type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string", "enum": events},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}}}


def _stream(*blocks: dict) -> dict:
    doc = _doc(_obj(s=STR))
    doc["paths"]["/x"]["post"]["responses"]["200"]["content"]["text/event-stream"] = {
        "schema": {"type": "string"}, "x-itemSchema": {"oneOf": list(blocks)}}
    return doc


OUT, IN = {"$ref": "#/components/schemas/Out"}, {"$ref": "#/components/schemas/In"}
UNION = {"anyOf": [OUT, SUB]}


@pytest.mark.parametrize("old, new, expected", [
    (_stream(_block("A", ["x"], OUT)), _stream(_block("A", ["x"], OUT), _block("B", ["y"], OUT)),
     "op 200: a new kind of block B"),
    (_stream(_block("A", ["x"], OUT)), _stream(_block("A", ["x", "y"], OUT)), "op 200 A.event: enum values ['y'] added"),
    (_stream(_block("A", ["x"], UNION)),
     _without(_stream(_block("A", ["x"], UNION)), "components", "schemas", "Sub", "properties", "note"),
     "op 200 A.data<Sub>.note: removed"),
    (_stream(_block("A", ["x"], UNION)), _stream(_block("A", ["x"], {"anyOf": [OUT, SUB, IN]})),
     "op 200 A.data: may now be a In"),
    (_stream(_block("A", ["x"], OUT)), _doc(_obj(s=STR)), "response 200 no longer declares its event stream's blocks"),
])
def test_event_stream_changes_that_break_clients(old, new, expected):
    breaks = breaking_changes(old, new)
    assert any(expected in b for b in breaks), breaks


def test_an_unchanged_or_narrower_event_stream_keeps_clients_working():
    assert breaking_changes(_stream(_block("A", ["x"], UNION)), _stream(_block("A", ["x"], UNION))) == []
    assert breaking_changes(_stream(_block("A", ["x", "y"], OUT), _block("B", ["z"], OUT)),
                            _stream(_block("A", ["x"], OUT))) == []


def _schema_edit(doc: dict, edit) -> dict:
    doc = copy.deepcopy(doc)
    edit(doc["components"]["schemas"])
    return doc


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s["WebhookDeliveryOut"]["properties"]["status"]["enum"].append("paused"),
     "listWebhookDeliveries 200.data[].status: enum values ['paused'] added"),
    (lambda s: s["Event"]["properties"]["status"]["anyOf"][0]["enum"].append("paused"),
     "status: enum values ['paused'] added"),
    (lambda s: s["WebhookCreate"]["properties"]["events"]["items"]["enum"].remove("schedule.run"),
     "createWebhook request.events[]: enum values ['schedule.run'] no longer accepted"),
    (lambda s: s["JobRequest"]["properties"]["export"]["anyOf"][0]["items"].update(const="tflite"),
     "createJob request.export[]: enum values ['onnx'] no longer accepted"),
    (lambda s: s["Job"]["properties"].update(progress={"anyOf": [{"type": "number"}, {"type": "null"}]}),
     "getJob 200.progress: may now be null"),
    (lambda s: s["Artifact"]["required"].remove("size"),
     "listJobArtifacts 200.data[].size: no longer always present"),
    (lambda s: s["JobRequest"]["properties"].update(eval_dataset={"type": "string"}),
     "createJob request.eval_dataset: no longer accepts ['null']"),
    (lambda s: s["JobGone"]["properties"].pop("detail"), "streamJobEvents 200 EndItem.data<JobGone>.detail: removed"),
    (lambda s: s["Event"]["properties"]["kind"]["enum"].append("log"), "streamJobEvents 200 JobEventItem.data.kind"),
])
def test_enum_changes_in_the_served_document(document, edit, expected):
    breaks = breaking_changes(document, _schema_edit(document, edit))
    assert any(expected in b for b in breaks), breaks
