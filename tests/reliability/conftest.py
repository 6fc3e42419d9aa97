"""Fixtures for the reliability tests (issue #5).

The shared Postgres/Redis fixtures are the service tests' own (imported). The outage tests need
servers they may stop and start, so they get PRIVATE ones: a PostgreSQL cluster made with initdb
in a temp dir and a redis-server without persistence, each on a free port, always stopped in a
finalizer. The machine's shared servers (5432 / 6379) are never restarted.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from service.conftest import (  # noqa: F401  (fixtures re-exported for tests/reliability)
    Recorder, assert_problem, auth, count_rows, pg_url, redis_broker, service_settings, settings_env,
    start_proc, stored_files, tar_gz_of, wait_for)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REPO = Path(__file__).resolve().parents[2]

# Small enough for seconds on a 2-core CPU; mask_steps makes a run last long enough to be hit
# by a kill or a restart (a real compression, no slow-down knob).
# hidden_distill_weight 0: the teacher's hidden-state pass (a vtrans/fast default) would add ~40%
# to every step and push SLOW past the tests' deadlines on a loaded machine.
FAST = {"max_train_examples": 64, "max_eval_examples": 16, "mask_steps": 3, "prune_rounds": 1,
        "finetune_steps": 2, "batch_size": 16, "seq_len": 16, "latency_runs": 1, "round_to": 1,
        "hidden_distill_weight": 0.0}
# Long enough (~6 s idle, ~30 s on a loaded 2-core machine) for a kill or a server restart to
# land mid-run on any machine; a faster run would finish before the test could hit it.
SLOW = dict(FAST, mask_steps=600, prune_rounds=2, finetune_steps=5)
BUDGET = {"kind": "flops", "target": 0.6, "seq_len": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_tenant(settings, prefix: str = "t") -> tuple[str, dict[str, str]]:
    """A fresh tenant with its own key: (tenant name, Authorization header)."""
    from api.auth import create_key

    name = f"{prefix}-{secrets.token_hex(4)}"
    return name, {"Authorization": f"Bearer {create_key(settings.db_url, name).key}"}


def make_client(settings, headers: dict[str, str] | None = None, enqueue=None):
    from fastapi.testclient import TestClient

    from api.app import create_app

    return TestClient(create_app(settings, enqueue=enqueue if enqueue is not None else Recorder()),
                      headers=headers if headers is not None else auth(settings))


def submit_job(settings, inputs, options: dict, method: str = "fast") -> str:
    """Submit a job through the API with the real enqueue (Celery) and return its id."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    model_id, ds_id = inputs
    with TestClient(create_app(settings), headers=auth(settings)) as c:
        r = c.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET, "method": method,
                                     "options": options})
        assert r.status_code == 202, r.text
        return r.json()["id"]


@pytest.fixture
def api_settings(service_settings):
    """service_settings with a generous job quota (limits are tested with their own copies)."""
    return service_settings.model_copy(update={"max_active_jobs": 10_000})


@pytest.fixture(scope="module")
def inputs(service_settings, tiny_model_dir, tiny_dataset_csv):
    """A model and a dataset uploaded once, for tenant "default"."""
    with make_client(service_settings) as c:
        m = c.post("/v1/models", files={"file": ("m.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")})
        d = c.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
        assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
        return m.json()["id"], d.json()["id"]


# ------------------------------------------------------------------ private servers

def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    # initdb/pg_ctl refuse to run as root: run them as the postgres user.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, capture_output=True, text=True, timeout=120, **kw)


class PrivatePostgres:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="vtrans-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.data = self.dir / "data"
        r = _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"])
        assert r.returncode == 0, r.stderr
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        r = _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                          str(self.dir / "log"), "-w", "start"])
        assert r.returncode == 0, r.stdout + r.stderr

    def stop(self) -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    def __init__(self, workdir: Path):
        self.port, self.workdir, self.proc = free_port(), workdir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(lambda: _pings(redis, self.url), 20, 0.2, what="private redis")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def _pings(redis, url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return False


@pytest.fixture
def private_pg():
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def private_redis(tmp_path):
    r = PrivateRedis(tmp_path)
    try:
        r.start()
        yield r
    finally:
        r.stop()


def worker_cmd() -> list[str]:
    return [sys.executable, "-m", "api.cli", "worker"]


def start_worker(start_proc, settings, name: str = "worker"):
    proc = start_proc(worker_cmd(), settings_env(settings), name)
    wait_for(lambda: "ready." in proc.output() or proc.p.poll() is not None, 120, what=f"{name} ready")
    assert proc.p.poll() is None, proc.output()
    return proc


def job_row(settings, job_id: str):
    from api.db import session_scope
    from api.models import Job

    with session_scope(settings.db_url) as s:
        return s.get(Job, job_id)


def artifact_rows(settings, job_id: str) -> list:
    from sqlalchemy import select

    from api.db import session_scope
    from api.models import Artifact

    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(Artifact).where(Artifact.job_id == job_id)).all())


def wait_status(settings, job_id: str, statuses, timeout: float, log=None):
    def done():
        try:
            job = job_row(settings, job_id)
        except Exception:
            return None
        return job if job is not None and job.status in statuses else None

    try:
        return wait_for(done, timeout, 0.5, what=f"job {job_id} in {statuses}")
    except AssertionError:
        raise AssertionError(f"job {job_id} not in {statuses}: {job_row(settings, job_id).__dict__}\n"
                             f"{log() if log else ''}") from None


def running_with_progress(settings, job_id: str, timeout: float = 120):
    """Wait until the job is running AND past loading (so a kill hits a compression in progress)."""
    return wait_for(lambda: (j := job_row(settings, job_id)) is not None and j.status == "running"
                    and j.stage in ("masks", "prune", "finetune", "teacher"), timeout, 0.3,
                    what=f"job {job_id} compressing")
