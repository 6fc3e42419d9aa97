"""What makes an OpenAPI document break clients written against an older one.

Breaking: an operation (by operationId) removed or moved to another method/path; a response
schema losing a property, changing its type, gaining an enum value (a generated client with
the old enum fails to parse the new value), or no longer promising a value: a field that may now
be null, or that was required and no longer is (a typed client reads it as always there); a
request (body or parameter) gaining a required field or losing one it accepted, refusing a type
(null included: a field that was nullable and no longer is) or an enum value a client may send,
or a field that took any value now limited to some types. A union of named schemas compares
each with its namesake (an answer gaining one breaks). An event stream's declared blocks
(x-itemSchema) are answers: a new kind of block breaks, and each block's data is compared like a
response. Added fields, operations, optional parameters, request enum values, a request field
becoming nullable and a response field no longer null are not breaking.
"""
from __future__ import annotations

import json
import re
from typing import Any


def _resolve(doc: dict, schema: dict | None) -> dict:
    while schema and "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema or {}


def _types(doc: dict, schema: dict) -> set[str]:
    """The JSON types a schema admits ("null" included), across anyOf/oneOf; empty: any value.
    Null is written several ways: a {"type": "null"} alternative (pydantic's `X | None`), a type
    list (OpenAPI 3.1), `nullable: true` (3.0), or null among the enum/const values."""
    schema = _resolve(doc, schema)
    out: set[str] = set()
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        out |= _types(doc, alt)
    kind = schema.get("type")
    out.update(kind if isinstance(kind, list) else [kind] if kind else [])
    if out and (schema.get("nullable") is True or None in schema.get("enum", ())
                or ("const" in schema and schema["const"] is None)):
        out.add("null")
    return out


def _operations(doc: dict) -> dict[str, tuple[str, str, dict]]:
    return {op["operationId"]: (method, path, op) for path, item in doc.get("paths", {}).items()
            for method, op in item.items() if isinstance(op, dict) and "operationId" in op}


def _unwrap(doc: dict, schema: dict) -> dict:
    """`X | None` (anyOf [X, null], as pydantic writes an optional field) -> X, resolved: the
    fields of an optional nested object are compared like those of a required one."""
    alts = [_resolve(doc, a) for a in schema.get("anyOf", []) + schema.get("oneOf", [])]
    real = [a for a in alts if a.get("type") != "null"]
    return real[0] if len(real) == 1 and len(alts) == 2 else schema


def _enum(doc: dict, schema: dict) -> set | None:
    """The values a schema is limited to (enum, const, across anyOf/oneOf alternatives; a null
    alternative is nullability, which the type check covers), or None if it takes any value."""
    schema = _resolve(doc, schema)
    alts = schema.get("anyOf", []) + schema.get("oneOf", [])
    if alts:
        values: set = set()
        for alt in (_resolve(doc, a) for a in alts):
            if alt.get("type") == "null":
                continue
            sub = _enum(doc, alt)
            if sub is None:
                return None
            values |= sub
        return values
    # null among the values is nullability too (the type check covers it), not an enum value.
    if "const" in schema:
        return {_hashable(schema["const"])} - {None}
    if "enum" in schema:
        return {_hashable(v) for v in schema["enum"]} - {None}
    # a pattern that is a plain alternation of words, ^(a|b|c)$, limits a string as an enum does
    # (what a parameter declared with Query(pattern=...) documented before it became an enum)
    if schema.get("type") == "string" and (m := _WORD_ALTERNATION.fullmatch(schema.get("pattern", ""))):
        return set(m.group(1).split("|"))
    return None


_WORD_ALTERNATION = re.compile(r"\^\(([\w.-]+(?:\|[\w.-]+)*)\)\$")


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _listed(values: set) -> list:
    return sorted(values, key=lambda v: (str(type(v)), str(v)))


def _compare_enums(old_doc: dict, new_doc: dict, old: dict, new: dict, where: str, direction: str,
                   out: list[str]) -> None:
    # A generated client turns an enum into a closed type: in an answer, a value it was not
    # generated with fails to parse (so an added value breaks it); in a request, a value it was
    # generated with may be sent (so a removed one, or a new restriction, breaks it).
    old_enum, new_enum = _enum(old_doc, old), _enum(new_doc, new)
    if direction == "response" and old_enum is not None:
        if new_enum is None:
            out.append(f"{where}: no longer limited to the enum values {_listed(old_enum)}")
        elif new_enum - old_enum:
            out.append(f"{where}: enum values {_listed(new_enum - old_enum)} added to a response")
    if direction == "request" and new_enum is not None:
        if old_enum is None:
            out.append(f"{where}: now limited to the enum values {_listed(new_enum)}")
        elif old_enum - new_enum:
            out.append(f"{where}: enum values {_listed(old_enum - new_enum)} no longer accepted")


def _compare_schema(old_doc: dict, new_doc: dict, old: dict, new: dict, where: str, direction: str,
                    seen: set, out: list[str]) -> None:
    old, new = _resolve(old_doc, old), _resolve(new_doc, new)
    key = (where, id(old))
    if key in seen:
        return
    seen.add(key)
    old_types, new_types = _types(old_doc, old), _types(new_doc, new)
    if direction == "response" and old_types:  # empty: the answer could already be anything
        if not new_types or not new_types <= old_types | {"null"}:
            out.append(f"{where}: type changed from {sorted(old_types)} to {sorted(new_types or ['any'])}")
        if "null" in new_types - old_types:
            # A typed client declared the field non-optional and fails (or crashes later) on null.
            out.append(f"{where}: may now be null (it never was)")
    if direction == "request" and new_types:  # empty: any value is still accepted
        if not old_types:
            out.append(f"{where}: took any value, now only {sorted(new_types)}")
        elif not old_types <= new_types:
            out.append(f"{where}: no longer accepts {sorted(old_types - new_types)}")
    _compare_enums(old_doc, new_doc, old, new, where, direction, out)
    old, new = _unwrap(old_doc, old), _unwrap(new_doc, new)
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    if direction == "response":
        new_required = set(new.get("required", []))
        for name in old_props:
            if name not in new_props:
                out.append(f"{where}.{name}: removed")
            elif name in old.get("required", []) and name not in new_required:
                out.append(f"{where}.{name}: no longer always present (was required)")
    else:
        added_required = set(new.get("required", [])) - set(old.get("required", []))
        for name in sorted(added_required):
            out.append(f"{where}.{name}: newly required")
        for name in old_props:
            if name not in new_props and new.get("additionalProperties") is False:
                out.append(f"{where}.{name}: no longer accepted")
    for name, sub in old_props.items():
        if name in new_props:
            _compare_schema(old_doc, new_doc, sub, new_props[name], f"{where}.{name}", direction, seen, out)
    for part, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(old.get(part), dict) and isinstance(new.get(part), dict):
            _compare_schema(old_doc, new_doc, old[part], new[part], f"{where}{suffix}", direction, seen, out)
    # A union of named schemas (e.g. the stream's end: Job | JobGone): each one is compared with
    # its namesake; an answer that may be a new one, or a request refusing one, breaks clients.
    old_alts, new_alts = _named_alternatives(old), _named_alternatives(new)
    for name in sorted(old_alts.keys() & new_alts.keys()):
        _compare_schema(old_doc, new_doc, old_alts[name], new_alts[name], f"{where}<{name}>", direction, seen, out)
    if direction == "response" and old_alts:
        out.extend(f"{where}: may now be a {name}" for name in sorted(new_alts.keys() - old_alts.keys()))
    if direction == "request" and new_alts:
        out.extend(f"{where}: no longer accepts a {name}" for name in sorted(old_alts.keys() - new_alts.keys()))


def _named_alternatives(schema: dict) -> dict[str, dict]:
    """{component name: $ref} of an anyOf/oneOf of two or more named schemas (null aside; a
    single one with null is an optional field, which _unwrap handles)."""
    alts = [a for a in schema.get("anyOf", []) + schema.get("oneOf", []) if a.get("type") != "null"]
    if len(alts) < 2 or not all("$ref" in a for a in alts):
        return {}
    return {a["$ref"].rsplit("/", 1)[-1]: a for a in alts}


def _sse_items(response: dict) -> dict[str, dict] | None:
    """The blocks an event stream declares (x-itemSchema of text/event-stream, one oneOf
    alternative per kind of block, named by its title), or None."""
    items = response.get("content", {}).get("text/event-stream", {}).get("x-itemSchema")
    return None if items is None else {alt.get("title", str(i)): alt for i, alt in enumerate(items.get("oneOf", [items]))}


def _compare_sse_items(old_doc: dict, new_doc: dict, old: dict[str, dict], new: dict[str, dict], where: str,
                       seen: set, out: list[str]) -> None:
    # A block is an answer: a new kind of block is like a new enum value, and each field of a
    # kind (the JSON in `data` by its contentSchema) is compared like a response field.
    out.extend(f"{where}: a new kind of block {title}" for title in sorted(new.keys() - old.keys()))
    for title in sorted(old.keys() & new.keys()):
        old_props, new_props = old[title].get("properties", {}), new[title].get("properties", {})
        for name, sub in old_props.items():
            if name not in new_props:
                out.append(f"{where} {title}.{name}: removed")
                continue
            new_sub = new_props[name]
            if "contentSchema" in sub and "contentSchema" in new_sub:
                sub, new_sub = sub["contentSchema"], new_sub["contentSchema"]
            _compare_schema(old_doc, new_doc, sub, new_sub, f"{where} {title}.{name}", "response", seen, out)


def _json_schema(response_or_body: dict) -> dict | None:
    content = response_or_body.get("content", {})
    for media in ("application/json", "application/problem+json", "multipart/form-data"):
        if media in content:
            return content[media].get("schema")
    return None


def breaking_changes(old_doc: dict, new_doc: dict) -> list[str]:
    out: list[str] = []
    old_ops, new_ops = _operations(old_doc), _operations(new_doc)
    for op_id, (method, path, old_op) in sorted(old_ops.items()):
        if op_id not in new_ops:
            out.append(f"operation {op_id} ({method.upper()} {path}): removed or renamed")
            continue
        new_method, new_path, new_op = new_ops[op_id]
        if (new_method, new_path) != (method, path):
            out.append(f"operation {op_id}: moved from {method.upper()} {path} to {new_method.upper()} {new_path}")
        seen: set[Any] = set()
        for status, old_resp in old_op.get("responses", {}).items():
            new_resp = new_op.get("responses", {}).get(status)
            if new_resp is None:
                out.append(f"operation {op_id}: response {status} removed")
                continue
            old_items, new_items = _sse_items(old_resp), _sse_items(new_resp)
            if old_items is not None:
                if new_items is None:
                    out.append(f"operation {op_id}: response {status} no longer declares its event stream's blocks")
                else:
                    _compare_sse_items(old_doc, new_doc, old_items, new_items, f"{op_id} {status}", seen, out)
            old_schema, new_schema = _json_schema(old_resp), _json_schema(new_resp)
            if old_schema is not None:
                if new_schema is None:
                    out.append(f"operation {op_id}: response {status} no longer JSON")
                else:
                    _compare_schema(old_doc, new_doc, old_schema, new_schema, f"{op_id} {status}", "response",
                                    seen, out)
        old_body, new_body = old_op.get("requestBody"), new_op.get("requestBody")
        if old_body and new_body:
            _compare_schema(old_doc, new_doc, _json_schema(old_body) or {}, _json_schema(new_body) or {},
                            f"{op_id} request", "request", seen, out)
        elif new_body and new_body.get("required") and not old_body:
            out.append(f"operation {op_id}: now requires a request body")
        old_params = {(p["in"], p["name"]): p for p in old_op.get("parameters", [])}
        new_params = {(p["in"], p["name"]): p for p in new_op.get("parameters", [])}
        for key, p in new_params.items():
            if p.get("required") and key not in old_params:
                out.append(f"operation {op_id}: new required parameter {key[0]}:{key[1]}")
            elif p.get("required") and not old_params.get(key, {}).get("required"):
                out.append(f"operation {op_id}: parameter {key[0]}:{key[1]} newly required")
        for key, p in old_params.items():
            if key not in new_params:
                out.append(f"operation {op_id}: parameter {key[0]}:{key[1]} removed")
            else:  # a parameter is request input: e.g. an enum value it loses breaks a client sending it
                _compare_schema(old_doc, new_doc, p.get("schema", {}), new_params[key].get("schema", {}),
                                f"{op_id} parameter {key[0]}:{key[1]}", "request", seen, out)
    return out
