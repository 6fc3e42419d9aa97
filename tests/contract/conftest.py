"""Fixtures for the contract tests: the service's real processes (the live tests' fixtures:
Postgres, Redis, `vtrans api` and `vtrans worker` subprocesses, always killed)."""
from __future__ import annotations

import tempfile

import pytest

from live.conftest import live_api, redis_url  # noqa: F401  (fixtures re-exported)
from service.conftest import (  # noqa: F401
    auth, celery_worker, make_service_settings, pg_url, redis_broker, settings_env, start_proc, wait_for)


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory, pg_url, redis_broker):
    # A lease long enough for a loaded 2-core CI machine: these tests are about the contract,
    # lease expiry has its own tests (tests/reliability).
    return make_service_settings(tmp_path_factory, pg_url, redis_broker, lease_seconds=180,
                                 tenant_limits={LIMITED_TENANT: {"max_active_jobs": 1}})


LIMITED_TENANT = "limited-one-job"


@pytest.fixture
def proxy(live_api):
    from .proxy import CuttingProxy

    port = int(live_api.url.rsplit(":", 1)[1])
    p = CuttingProxy(port)
    yield p
    p.close()


def served_document() -> dict:
    """The document /openapi.json serves, built from the app without a database."""
    from api.app import create_app
    from api.settings import Settings

    return create_app(Settings(data_dir=tempfile.mkdtemp(prefix="vtrans-doc-"))).openapi()


@pytest.fixture(scope="session")
def document() -> dict:
    return served_document()
