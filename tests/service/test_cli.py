"""`vtrans` command line: bad input exits 2 with a message; migrate; refusal on an un-migrated DB."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VTRANS = str(Path(sys.executable).parent / "vtrans")


def _run(args, tmp_path, **env):
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("VTRANS_")}
    e.update(VTRANS_DATA_DIR=str(tmp_path / "var"), **env)
    return subprocess.run([VTRANS, *args], env=e, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["serve", "--port", "eighty"], ["worker", "--pool", "threads"]])
def test_bad_arguments_exit_2(tmp_path, args):
    r = _run(args, tmp_path)
    assert r.returncode == 2 and ("usage:" in r.stderr or "error" in r.stderr), r.stderr


def test_bad_configuration_exits_2(tmp_path):
    r = _run(["migrate"], tmp_path, VTRANS_PORT="not-a-port")
    assert r.returncode == 2 and "invalid configuration" in r.stderr


def test_api_refuses_an_unmigrated_database_then_migrate_fixes_it(tmp_path):
    from api.db import check_migrated

    r = _run(["api", "--port", "1"], tmp_path)
    assert r.returncode == 1 and "not migrated" in r.stderr and "vtrans migrate" in r.stderr
    r = _run(["migrate"], tmp_path)
    assert r.returncode == 0, r.stderr
    check_migrated(f"sqlite:///{tmp_path / 'var' / 'vtrans.db'}")  # raises if not at head


def test_app_startup_refuses_an_unmigrated_database(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.db import DatabaseNotMigrated
    from api.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "fresh"), enqueue=lambda _id: None)
    with pytest.raises(DatabaseNotMigrated, match="vtrans migrate"):
        with TestClient(app):
            pass


def test_compress_subcommand_is_the_core_cli(tmp_path):
    r = _run(["compress", "--help"], tmp_path)
    assert r.returncode == 0 and "usage: vtrans compress" in r.stdout
    r = _run(["compress", "--model", "x"], tmp_path)
    assert r.returncode == 2  # the core CLI's own argument errors keep exit status 2


def test_migrations_match_the_models(pg_url):
    """The Alembic head creates exactly the schema the SQLAlchemy models describe (Postgres)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from api.db import get_engine
    from api.models import Base

    with get_engine(pg_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
