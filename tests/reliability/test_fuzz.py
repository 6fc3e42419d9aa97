"""Issue #5: a property-based fuzz of the OpenAPI document with schemathesis, in-process (ASGI)
against the real app on the test Postgres database, with a valid key. Every operation gets
generated cases (valid and invalid data); across all of them at least 1,000 are run, and none
may answer 5xx or break the documented status codes, content types, headers or schemas. The
`ignored_auth` check also proves each /v1 operation really refuses a missing or bad key."""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.core.failures import FailureGroup

from .conftest import Recorder, new_tenant

pytestmark = pytest.mark.slow
MIN_CASES = 1000
EXAMPLES_PER_OPERATION = int(os.environ.get("VTRANS_FUZZ_EXAMPLES", "110"))
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance, checks.ignored_auth]
COUNTS: dict[str, int] = {}
STATUSES: dict[str, set[int]] = {}


class LateApp:
    """The schema is loaded at collection time, the app needs the test database from a fixture:
    schemathesis calls this ASGI proxy, which forwards to the app the fixture binds."""

    target = None

    async def __call__(self, scope, receive, send):
        await self.target(scope, receive, send)


def _document() -> dict:
    import tempfile

    from api.app import create_app
    from api.settings import Settings

    # The document only (no request is served by this app); a throwaway data dir keeps the repo clean.
    return create_app(Settings(data_dir=tempfile.mkdtemp(prefix="vtrans-doc-"))).openapi()


HEADERS: dict[str, str] = {}
LATE = LateApp()
schema = schemathesis.openapi.from_dict(_document())
schema.app = LATE


@pytest.fixture(scope="module", autouse=True)
def fuzz_app(service_settings):
    from api.app import create_app

    # A tenant of its own, so generated jobs and uploads meet no one else's rows and quotas.
    fuzz_settings = service_settings.model_copy(update={"max_active_jobs": 10_000})
    _, headers = new_tenant(fuzz_settings, "fuzz")
    HEADERS.update(headers)
    LATE.target = create_app(fuzz_settings, enqueue=Recorder())
    yield
    LATE.target = None


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi(case):
    COUNTS[case.operation.label] = COUNTS.get(case.operation.label, 0) + 1
    response = case.call_and_validate(headers=HEADERS, checks=CHECKS)
    STATUSES.setdefault(case.operation.label, set()).add(response.status_code)


def test_fuzz_ran_enough_cases():
    total = sum(COUNTS.values())
    print(f"\nschemathesis: {total} cases over {len(COUNTS)} operations: {COUNTS}")
    assert len(COUNTS) == 30, f"every operation was fuzzed: {sorted(COUNTS)}"
    assert total >= MIN_CASES, total
    # The key was really sent (not 401s all the way down) and inputs reached the routes' own checks.
    assert 200 in STATUSES["GET /v1/jobs"] and 404 in STATUSES["GET /v1/jobs/{job_id}"]
    assert 422 in STATUSES["POST /v1/jobs"]
    assert not any(code >= 500 for codes in STATUSES.values() for code in codes - {503})


def test_the_checks_catch_a_broken_answer():
    """The harness can fail: the same checks against an app that answers 500, and one that
    answers with a body its schema forbids, raise."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    broken = FastAPI()
    broken.get("/healthz")(lambda: JSONResponse({"status": "ok"}, status_code=500))
    broken.get("/v1/jobs")(lambda: JSONResponse({"detail": 1}, status_code=404))  # not problem+json
    saved, LATE.target = LATE.target, broken
    try:
        for path, expected in (("/healthz", "ServerError"), ("/v1/jobs", "Content-Type")):
            with pytest.raises(FailureGroup) as failure:
                schema[path]["GET"].Case().call_and_validate(headers=HEADERS, checks=CHECKS)
            found = " ".join(f"{type(e).__name__} {e}" for e in failure.value.exceptions)
            assert expected in found, found
    finally:
        LATE.target = saved
