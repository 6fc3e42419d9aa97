"""What the per-request CPU cuts of the issue #16 load work must not change (benchmarks/README.md,
"API load"): the plain-ASGI middleware still adds Retry-After to 503s, still times every request
by route template (500s and unmatched paths included) and still refuses uploads before their
body; authentication holds no connection into the route, GETs run without BEGIN/COMMIT, and a
revoked key is still refused at once; a submit sends the job to its routed queue without reading it back."""
from __future__ import annotations

import secrets

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from .conftest import Recorder, assert_problem, auth

BODY = {"model": "org/tiny", "dataset": "tweet-sentiment", "budget": {"kind": "flops", "target": 0.5}}


def _latency_count(client: TestClient, route: str, status: str, method: str = "GET") -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vtrans_http_request_duration_seconds_count" and s.labels == {
                    "method": method, "route": route, "status": status}:
                return s.value
    return 0.0


@pytest.fixture
def app_with_test_routes(service_settings):
    """The real app plus three routes that fail in the ways the middleware must handle."""
    from api.app import create_app
    from api.problems import Problem

    settings = service_settings.model_copy(update={"retry_after_seconds": 11})
    app = create_app(settings, enqueue=Recorder())

    def unavailable():
        raise Problem(503, "down for a test")

    def unavailable_with_own_retry():
        raise Problem(503, "down for a test", headers={"Retry-After": "99"})

    def broken():
        raise RuntimeError("a bug")

    app.add_api_route("/test/unavailable", unavailable)
    app.add_api_route("/test/unavailable-own", unavailable_with_own_retry)
    app.add_api_route("/test/broken/{item}", broken)
    return app, settings


def test_middleware_keeps_retry_after_problems_and_request_timing(app_with_test_routes):
    app, settings = app_with_test_routes
    with TestClient(app, headers=auth(settings), raise_server_exceptions=False) as c:
        r = c.get("/test/unavailable")
        assert_problem(r, 503)
        assert r.headers["retry-after"] == "11"
        r = c.get("/test/unavailable-own")
        assert_problem(r, 503)
        assert r.headers.get_list("retry-after") == ["99"]       # kept, not doubled
        assert "retry-after" not in c.get("/healthz").headers

        body = assert_problem(c.get("/test/broken/7"), 500)
        assert body["instance"] == "/test/broken/7" and "a bug" not in body["detail"]
        assert_problem(c.get("/no/such/path"), 404)

        assert _latency_count(c, "/test/broken/{item}", "500") == 1    # the template, not the raw path
        assert _latency_count(c, "/test/unavailable", "503") == 1
        assert _latency_count(c, "unmatched", "404") == 1
        assert _latency_count(c, "/healthz", "200") == 1


def test_uploads_are_still_refused_before_their_body(client):
    r = client.post("/v1/datasets", headers={"Authorization": ""}, files={"file": ("d.csv", b"x", "text/csv")})
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].lower().startswith("bearer")
    r = client.post("/v1/datasets", files={"file": ("d.csv", b"text,label\n" * 40_000, "text/csv")})
    assert_problem(r, 413, "file")   # 440 KB against the tests' 256 KiB limit, from Content-Length


@pytest.fixture
def db_key(service_settings):
    from api.auth import create_key, revoke_key

    created = create_key(service_settings.db_url, f"overhead-{secrets.token_hex(3)}")
    yield created
    revoke_key(service_settings.db_url, created.id)


def test_authentication_holds_no_connection_into_the_route_and_revocation_is_immediate(service_settings, db_key):
    """The key's lookup gives its connection back before the route runs (a connection held across
    FastAPI's thread hops deadlocked the pool under overload), GETs send neither BEGIN nor COMMIT,
    every request returns its connections, and a revoked key is refused at once."""
    from api.app import create_app
    from api.auth import revoke_key
    from api.db import get_engine
    from api.deps import get_db
    from api.tenancy import get_tenant
    from fastapi import Depends

    engine = get_engine(service_settings.db_url)
    held_at_route_start = []

    def probe(tenant: str = Depends(get_tenant), db=Depends(get_db)):
        held_at_route_start.append(engine.pool.checkedout())
        return {"tenant": tenant}

    statements = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement.split()[0].upper())

    app = create_app(service_settings, enqueue=Recorder())
    app.add_api_route("/test/probe", probe)
    app.add_api_route("/test/probe", probe, methods=["POST"])
    headers = {"Authorization": f"Bearer {db_key.key}"}
    with TestClient(app, headers=headers) as c:
        job = c.post("/v1/jobs", json=BODY)
        assert job.status_code == 202, job.text
        assert c.get("/test/probe").json() == {"tenant": db_key.tenant_id}
        assert c.post("/test/probe").json() == {"tenant": db_key.tenant_id}
        assert held_at_route_start == [0, 0]        # the lookup's connection was back in the pool

        event.listen(engine, "before_cursor_execute", record)
        try:
            for path in (f"/v1/jobs/{job.json()['id']}", "/v1/jobs?status=queued&limit=20"):
                statements.clear()
                assert c.get(path).status_code == 200
                assert statements and set(statements) == {"SELECT"}, (path, statements)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert engine.pool.checkedout() == 0       # get_db's close gave the connection back

        missing = c.get("/v1/jobs/job_00000000000000000000")   # the route raises: closed all the same
        assert_problem(missing, 404)
        assert engine.pool.checkedout() == 0

        assert revoke_key(service_settings.db_url, db_key.id)
        body = assert_problem(c.get(f"/v1/jobs/{job.json()['id']}"), 401)
        assert body["type"] == "urn:vtrans:problem:unauthorized"
        assert_problem(c.get(f"/v1/jobs/{job.json()['id']}/events", params={"format": "json"}), 401)


def test_submit_enqueues_on_the_routed_queue_without_reading_it_back(service_settings, monkeypatch):
    from api.app import create_app
    from worker import celery_app

    sent = []

    class FakeCelery:
        def send_task(self, name, args, queue, eta=None, countdown=None, task_id=None):
            sent.append((name, args, queue, eta or countdown))

    def no_read_back(*_args):
        raise AssertionError("send_job read the job's queue back although the route passed it")

    monkeypatch.setattr(celery_app, "_app_for", lambda _settings_json: FakeCelery())
    monkeypatch.setattr(celery_app, "job_queue", no_read_back)
    settings = service_settings.model_copy(update={"cpu_queue": "overhead-cpu"})
    with TestClient(create_app(settings), headers=auth(settings)) as c:
        r = c.post("/v1/jobs", json=BODY)
        assert r.status_code == 202, r.text
    assert sent == [(celery_app.TASK_NAME, [r.json()["id"]], "overhead-cpu", None)]   # a new job is due now


def test_access_log_is_a_setting(monkeypatch, service_settings):
    import uvicorn

    from api import cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    cli._run_uvicorn(service_settings, "127.0.0.1", 0)
    assert seen["access_log"] is True                     # the default: a line per request
    monkeypatch.setenv("VTRANS_ACCESS_LOG", "false")
    from api.settings import Settings

    assert Settings().access_log is False
    cli._run_uvicorn(service_settings.model_copy(update={"access_log": False}), "127.0.0.1", 0)
    assert seen["access_log"] is False


def test_the_warm_up_request_passes_the_checks_it_warms(caplog):
    """api/core_bridge.warm_up validates a sample request at start so the first real submit does
    not pay the imports (~2 s of CPU holding the GIL): a sample the checks refuse would only log a
    warning, and the warm-up would silently stop warming."""
    import logging

    from api import core_bridge

    with caplog.at_level(logging.WARNING, logger="api.core_bridge"):
        core_bridge.warm_up()
    assert not [r for r in caplog.records if "warming up" in r.getMessage()]
    normalized = core_bridge.validate_job(core_bridge._WARM_UP_CONFIG, {"kind": "flops", "target": 0.5}, "fast", {},
                                          data_kind="labelled")
    assert normalized["options"]["task"] == "sequence-classification"
