"""What makes an OpenAPI document break clients written against an older one.

Breaking: an operation (by operationId) removed or moved to another method/path; a response
schema losing a property or changing its type; a request gaining a required field or losing
one it accepted; an enum losing a value a client may send. Additions are not breaking.
"""
from __future__ import annotations

from typing import Any


def _resolve(doc: dict, schema: dict | None) -> dict:
    while schema and "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema or {}


def _types(doc: dict, schema: dict) -> set[str]:
    schema = _resolve(doc, schema)
    out: set[str] = set()
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        out |= _types(doc, alt)
    if "type" in schema:
        out.add(schema["type"])
    return out


def _operations(doc: dict) -> dict[str, tuple[str, str, dict]]:
    return {op["operationId"]: (method, path, op) for path, item in doc.get("paths", {}).items()
            for method, op in item.items() if isinstance(op, dict) and "operationId" in op}


def _compare_schema(old_doc: dict, new_doc: dict, old: dict, new: dict, where: str, direction: str,
                    seen: set, out: list[str]) -> None:
    old, new = _resolve(old_doc, old), _resolve(new_doc, new)
    key = (where, id(old))
    if key in seen:
        return
    seen.add(key)
    old_types, new_types = _types(old_doc, old), _types(new_doc, new)
    if direction == "response" and not new_types <= old_types | {"null"} and old_types:
        out.append(f"{where}: type changed from {sorted(old_types)} to {sorted(new_types)}")
    if direction == "request" and not old_types <= new_types and new_types:
        out.append(f"{where}: no longer accepts {sorted(old_types - new_types)}")
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    if direction == "response":
        for name, sub in old_props.items():
            if name not in new_props:
                out.append(f"{where}.{name}: removed")
            else:
                _compare_schema(old_doc, new_doc, sub, new_props[name], f"{where}.{name}", direction, seen, out)
        if old.get("items") and new.get("items"):
            _compare_schema(old_doc, new_doc, old["items"], new["items"], f"{where}[]", direction, seen, out)
    else:
        added_required = set(new.get("required", [])) - set(old.get("required", []))
        for name in sorted(added_required):
            out.append(f"{where}.{name}: newly required")
        for name in old_props:
            if name not in new_props and new.get("additionalProperties") is False:
                out.append(f"{where}.{name}: no longer accepted")
        lost = set(old.get("enum", [])) - set(new.get("enum", old.get("enum", [])))
        if lost:
            out.append(f"{where}: enum values {sorted(lost)} no longer accepted")
        for name, sub in old_props.items():
            if name in new_props:
                _compare_schema(old_doc, new_doc, sub, new_props[name], f"{where}.{name}", direction, seen, out)


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
        for p in new_op.get("parameters", []):
            if p.get("required") and (p["in"], p["name"]) not in old_params:
                out.append(f"operation {op_id}: new required parameter {p['in']}:{p['name']}")
        new_params = {(p["in"], p["name"]) for p in new_op.get("parameters", [])}
        for key in old_params:
            if key not in new_params:
                out.append(f"operation {op_id}: parameter {key[0]}:{key[1]} removed")
    return out
