"""POST/GET /v1/jobs without a worker: validation (problem+json, nothing written), the normalized
request, listing with filters and cursor pagination, cancelling a queued job, health, OpenAPI."""
from __future__ import annotations

import pytest

from .conftest import assert_problem, auth, count_rows, tar_gz_of

BUDGET = {"kind": "flops", "target": 0.5}


@pytest.fixture(scope="module")
def uploaded(service_settings, tiny_model_dir, tiny_dataset_csv):
    """A model and a dataset uploaded once for this module."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(service_settings, enqueue=lambda _id: None), headers=auth(service_settings)) as c:
        m = c.post("/v1/models", files={"file": ("m.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")})
        d = c.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
        assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
        return m.json()["id"], d.json()["id"]


def test_create_job_returns_202_and_normalized_request(client, uploaded, enqueued, service_settings):
    model_id, ds_id = uploaded
    before = count_rows(service_settings.db_url)["jobs"]
    r = client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": {"kind": "params", "target": 0.6},
                                      "method": "fast", "options": {"layout": "per_layer", "mask_steps": 3}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["id"].startswith("job_") and job["created_at"]
    req = job["request"]
    assert req["budget"] == {"kind": "params", "target": 0.6, "seq_len": 128}
    assert req["method"] == "fast" and req["options"]["layout"] == "per_layer" and req["options"]["mask_steps"] == 3
    assert req["options"]["round_to"] == 8  # defaults filled in: the job is reproducible later
    assert enqueued == [job["id"]]  # enqueued once, after the row was committed
    assert count_rows(service_settings.db_url)["jobs"] == before + 1
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["status"] == "queued" and got["request"] == req and got["artifacts"] == []


def test_method_dependent_defaults_are_stored_resolved(client, uploaded, enqueued):
    """A stored job names what will run: faster's own defaults are filled in, a given value kept."""
    model_id, ds_id = uploaded
    base = {"model": model_id, "dataset": ds_id, "budget": {"kind": "flops", "target": 0.6}, "method": "faster"}
    opts = client.post("/v1/jobs", json={**base, "options": {}}).json()["request"]["options"]
    # faster prunes every structure of a classifier by default (options.method_defaults), with its own mask schedule
    assert (opts["prune_hidden"], opts["prune_heads"], opts["beta"], opts["mask_lr"]) == (True, True, 1e-4, 0.1)
    opts = client.post("/v1/jobs", json={**base, "options": {"prune_hidden": False}}).json()["request"]["options"]
    assert opts["prune_hidden"] is False and opts["prune_heads"] is True
    r = client.post("/v1/jobs", json={**base, "options": {"beta": "lots"}})
    assert r.status_code == 422 and "options.beta" in r.text


def test_hub_id_and_builtin_dataset_are_accepted(client, enqueued):
    r = client.post("/v1/jobs", json={"model": "prajjwal1/bert-tiny", "dataset": "tweet-sentiment", "budget": BUDGET})
    assert r.status_code == 202, r.text
    assert r.json()["request"]["method"] == "vtrans"


def test_speedup_budget_job_is_served_by_every_job_operation(client, uploaded, enqueued):
    """A budget kind the core accepts (speedup, method faster) is one the Job response model
    accepts too: submit, get, list and cancel answer with it instead of a 500."""
    model_id, ds_id = uploaded
    r = client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "method": "faster",
                                      "budget": {"kind": "speedup", "target": 1.5}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["request"]["budget"]["kind"] == "speedup" and enqueued == [job_id]
    assert client.get(f"/v1/jobs/{job_id}").json()["request"]["budget"]["target"] == 1.5
    listed = client.get("/v1/jobs", params={"status": "queued", "limit": 100})
    assert listed.status_code == 200 and job_id in [j["id"] for j in listed.json()["data"]]
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def _bad(uploaded, **change):
    model_id, ds_id = uploaded
    body = {"model": model_id, "dataset": ds_id, "budget": dict(BUDGET), "method": "vtrans", "options": {}}
    for key, value in change.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


CASES = [
    # (change to a valid body, status, field named in errors)
    ({"budget": {"kind": "flops", "target": 0}}, 422, "budget.target"),
    ({"budget": {"kind": "flops", "target": 1}}, 422, "budget.target"),
    ({"budget": {"kind": "flops", "target": 1.5}}, 422, "budget.target"),
    ({"budget": {"kind": "flops", "target": -0.2}}, 422, "budget.target"),
    ({"budget": {"kind": "flops", "target": "half"}}, 422, "budget.target"),
    ({"budget": {"kind": "latency", "target": 0.5}}, 422, "budget.kind"),
    ({"budget": {"kind": "flops", "target": 0.5, "speed": 2}}, 422, "budget.speed"),
    ({"budget": "0.5"}, 422, "budget"),
    ({"budget": ...}, 422, "budget"),
    ({"method": "magic"}, 422, "method"),
    ({"options": {"no_such_option": 1}}, 422, "options.no_such_option"),
    ({"options": {"layout": "diagonal"}}, 422, "options.layout"),
    ({"options": {"batch_size": "many"}}, 422, "options.batch_size"),
    ({"options": {"prune_rounds": 0}}, 422, "options.prune_rounds"),
    ({"options": {"mixed_precision": "fp8"}}, 422, "options.mixed_precision"),
    ({"options": [1, 2]}, 422, "options"),
    ({"model": "mdl_00000000000000000000"}, 404, "model"),
    ({"dataset": "ds_00000000000000000000"}, 404, "dataset"),
    ({"model": "https://example.com/evil/model"}, 422, "model"),
    ({"model": "/etc/passwd"}, 422, "model"),
    ({"model": "../../models/x"}, 422, "model"),
    ({"model": "org/" + "x" * 100}, 422, "model"),
    ({"model": ...}, 422, "model"),
    ({"dataset": "/tmp/data.csv"}, 422, "dataset"),
    ({"dataset": "no-such-builtin"}, 422, "dataset"),
    ({"priority": "high"}, 422, "priority"),
]


@pytest.mark.parametrize("change,status,field", CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_invalid_job_requests_write_nothing(client, uploaded, enqueued, service_settings, change, status, field):
    before = count_rows(service_settings.db_url)
    body = assert_problem(client.post("/v1/jobs", json=_bad(uploaded, **change)), status, field)
    assert field in body["detail"]
    assert count_rows(service_settings.db_url) == before
    assert enqueued == []


def test_malformed_json_body_is_problem_json(client, service_settings):
    before = count_rows(service_settings.db_url)
    assert_problem(client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert count_rows(service_settings.db_url) == before


def test_unknown_job_and_route_are_404_problems(client):
    assert_problem(client.get("/v1/jobs/job_nope"), 404)
    assert_problem(client.post("/v1/jobs/job_nope/cancel"), 404)
    assert_problem(client.get("/v1/jobs/job_nope/artifacts/model.tar.gz"), 404)
    assert_problem(client.get("/v2/whatever"), 404)
    assert_problem(client.delete("/v1/jobs"), 405)


def test_cancel_queued_job_never_starts(client, uploaded, service_settings):
    from api import jobstore

    model_id, ds_id = uploaded
    job = client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET}).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    # A worker that receives the (already sent) message afterwards cannot claim it.
    assert jobstore.claim(service_settings.db_url, job["id"], "w", 30, 3) is None
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    # Cancelling again is harmless and keeps the status.
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_list_filters_and_cursor_pagination(client, uploaded):
    model_id, ds_id = uploaded
    ids = [client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET}).json()["id"]
           for _ in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    seen, cursor = [], None
    while True:
        params = {"model": model_id, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))                   # no job twice across pages
    assert [i for i in seen if i in ids] == ids[::-1]    # newest first
    created = [j["created_at"] for j in client.get("/v1/jobs", params={"limit": 100}).json()["data"]]
    assert created == sorted(created, reverse=True)
    cancelled = client.get("/v1/jobs", params={"status": "cancelled", "limit": 100}).json()["data"]
    assert ids[0] in [j["id"] for j in cancelled] and all(j["status"] == "cancelled" for j in cancelled)
    queued = client.get("/v1/jobs", params={"status": "queued,running", "model": model_id, "limit": 100}).json()["data"]
    assert set(ids[1:]) <= {j["id"] for j in queued}
    after = client.get(f"/v1/jobs/{ids[2]}").json()["created_at"]
    recent = client.get("/v1/jobs", params={"created_after": after, "model": model_id, "limit": 100}).json()["data"]
    assert {j["id"] for j in recent} >= set(ids[2:]) and ids[1] not in {j["id"] for j in recent}


def test_list_rejects_bad_filters(client):
    assert_problem(client.get("/v1/jobs", params={"status": "sleeping"}), 422, "status")
    assert_problem(client.get("/v1/jobs", params={"cursor": "garbage!"}), 422, "cursor")
    assert_problem(client.get("/v1/jobs", params={"limit": 0}), 422, "limit")
    assert_problem(client.get("/v1/jobs", params={"created_after": "yesterday"}), 422, "created_after")



def test_event_format_is_an_enum_that_refuses_other_values(client):
    """?format= is declared as the enum json/sse (generated clients get the choices); any other
    value is the same 422 problem+json naming `format` that the route's own check answered."""
    for bad in ("xml", "JSON", ""):
        body = assert_problem(client.get("/v1/jobs/job_nope/events", params={"format": bad}), 422, "format")
        assert "'json'" in body["detail"] and "'sse'" in body["detail"], body
    assert_problem(client.get("/v1/jobs/job_nope/events", params={"format": "json"}), 404)  # accepted, no such job
    param = next(p for p in client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]["get"]["parameters"]
                 if p["name"] == "format")
    assert {"enum": ["json", "sse"], "type": "string"} in param["schema"]["anyOf"] and not param["required"]

def test_health_ready_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    spec = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/datasets", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel",
                 "/v1/jobs/{job_id}/artifacts", "/v1/jobs/{job_id}/artifacts/{name}"):
        assert path in spec["paths"], path


def test_readyz_reports_an_unreachable_broker(service_settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    broken = service_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken, enqueue=lambda _id: None), headers=auth(broken)) as c:
        body = assert_problem(c.get("/readyz"), 503, "broker")
        assert "database" not in [e["field"] for e in body["errors"]]
