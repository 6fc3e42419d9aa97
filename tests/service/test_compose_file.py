"""docker-compose.yml against the code it configures (issue #16, item 6). Docker does not run on
our machines, so the file is never started in tests; these checks keep it from drifting: every
VTRANS_* variable is a real setting (a typo is silently ignored by pydantic-settings), every
command is a real `vtrans` subcommand with real flags, the workers' queues are the ones routing
sends jobs to, and the vtrans services share no volume (N machines share only the database,
the broker and the object store)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from api.cli import _parser
from api.settings import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _vtrans_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items()
            if (svc.get("command") or [None])[0] == "vtrans"}


def test_every_vtrans_variable_is_a_setting(compose):
    fields = {name.upper() for name in Settings.model_fields}
    services = _vtrans_services(compose)
    assert {"api", "migrate", "scheduler"} <= set(services)
    for name, svc in services.items():
        env = svc.get("environment") or {}
        unknown = sorted(k for k in env if k.startswith("VTRANS_") and k.removeprefix("VTRANS_") not in fields)
        assert not unknown, f"{name}: {unknown} are not settings (api/settings.py)"
        for needed in ("VTRANS_DATABASE_URL", "VTRANS_BROKER_URL", "VTRANS_ARTIFACT_URL"):
            assert env.get(needed), f"{name} lacks {needed}: without it a process falls back to local SQLite/disk"


def test_commands_parse_and_workers_serve_the_routed_queues(compose):
    services = _vtrans_services(compose)
    served: set[str] = set()
    for name, svc in services.items():
        args = _parser().parse_args(svc["command"][1:])      # exits (SystemExit) on an unknown flag
        if args.command == "worker":
            served |= set(args.queues.split(","))
    env = services["api"]["environment"]
    routed = {env["VTRANS_GPU_QUEUE"], env["VTRANS_CPU_QUEUE"]}
    assert routed and routed <= served, f"jobs routed to {routed}, workers serve {served}"


def test_vtrans_services_share_no_volume(compose):
    """A worker on another machine has no disk in common with the API: only named stores (the
    database's and the object store's own volumes) may be mounted, never by a vtrans process."""
    for name, svc in _vtrans_services(compose).items():
        assert not svc.get("volumes"), f"{name} mounts {svc['volumes']}: the services must share nothing on disk"
        env = svc["environment"]
        assert env["VTRANS_ARTIFACT_URL"].startswith("s3://") and env.get("AWS_ENDPOINT_URL")


def test_workers_wait_for_the_schema(compose):
    for name, svc in _vtrans_services(compose).items():
        if name != "migrate":
            assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
