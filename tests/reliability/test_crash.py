"""Issue #5, crash safety with real processes: kill -9 the Celery worker (main process and pool
child) in the middle of a real compression, start another worker, and check the job's end state,
its attempts, its artifacts and its events."""
from __future__ import annotations

import os
import secrets
import signal

import pytest
from sqlalchemy import select

from .conftest import (SLOW, artifact_rows, job_row, running_with_progress, start_worker,
                       stored_files, submit_job, wait_status)

pytestmark = pytest.mark.slow


@pytest.fixture
def crash_settings(service_settings, tmp_path):
    # A short lease so a dead worker is noticed in seconds; a queue of our own.
    return service_settings.model_copy(update={
        "lease_seconds": 10, "reaper_interval_seconds": 1, "cancel_check_seconds": 1, "max_attempts": 3,
        "queue": f"vtrans-crash-{secrets.token_hex(4)}", "max_active_jobs": 10_000,
        "data_dir": tmp_path / "data", "artifact_url": service_settings.artifact_url})


def _submit(settings, inputs) -> str:
    return submit_job(settings, inputs, SLOW)


def _kill9(proc) -> None:
    os.killpg(proc.p.pid, signal.SIGKILL)  # the worker's session: main process AND its pool child
    proc.p.wait(timeout=20)


def _events(settings, job_id: str) -> list:
    from api.db import session_scope
    from api.models import JobEvent

    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_kill_9_mid_run_then_a_new_worker_finishes_the_job(crash_settings, inputs, start_proc):
    worker = start_worker(start_proc, crash_settings, "worker1")
    job_id = _submit(crash_settings, inputs)
    running_with_progress(crash_settings, job_id)
    assert job_row(crash_settings, job_id).attempts == 1
    _kill9(worker)
    # Nobody is alive to finish it: the row still says running, on a lease that will run out.
    assert job_row(crash_settings, job_id).status == "running"

    worker2 = start_worker(start_proc, crash_settings, "worker2")
    job = wait_status(crash_settings, job_id, ("succeeded", "failed", "cancelled"), 300, log=worker2.output)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2 and job.metrics and job.metrics["method"] == "fast"
    rows = artifact_rows(crash_settings, job_id)
    names = [a.name for a in rows]
    assert rows and len(names) == len(set(names))            # exactly one set of artifacts...
    assert {a.attempt for a in rows} == {2} and all(a.final for a in rows)   # ...all from the attempt that finished
    files = [f for f in stored_files(crash_settings) if f.startswith(f"jobs/{job_id}/")]
    assert files and all(f.startswith(f"jobs/{job_id}/attempt-2/") for f in files)
    events = _events(crash_settings, job_id)
    statuses = [(e.status, e.attempt) for e in events if e.kind == "status"]
    assert ("queued", 1) in statuses and statuses.count(("succeeded", 2)) == 1   # one final result
    assert sum(e.status == "succeeded" for e in events) == 1
    assert any("lost its worker" in (e.message or "") for e in events)


def test_a_job_whose_workers_keep_dying_fails_with_a_clear_reason(crash_settings, inputs, start_proc):
    settings = crash_settings.model_copy(update={"max_attempts": 1})
    worker = start_worker(start_proc, settings, "worker1")
    job_id = _submit(settings, inputs)
    running_with_progress(settings, job_id)
    _kill9(worker)
    worker2 = start_worker(start_proc, settings, "worker2")  # its reaper finds the expired lease
    job = wait_status(settings, job_id, ("succeeded", "failed", "cancelled"), 120, log=worker2.output)
    assert job.status == "failed" and job.finished_at is not None
    assert job.error["type"] == "WorkerLost" and "lease expired" in job.error["message"]
    assert artifact_rows(settings, job_id) == []
    assert not [f for f in stored_files(settings) if f.startswith(f"jobs/{job_id}/")]  # no partial files


def test_kill_9_of_the_pool_child_only(crash_settings, inputs, start_proc):
    """The OOM-killer's usual victim is the pool child: the worker's main process survives, Celery
    redelivers the message (reject_on_worker_lost), the redelivery is ignored while the dead
    attempt's lease runs, and the reaper requeues it once the lease expires."""
    worker = start_worker(start_proc, crash_settings, "worker1")
    job_id = _submit(crash_settings, inputs)
    running_with_progress(crash_settings, job_id)
    children = _children(worker.p.pid)
    assert children, "prefork pool child not found"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    job = wait_status(crash_settings, job_id, ("succeeded", "failed", "cancelled"), 300, log=worker.output)
    assert job.status == "succeeded" and job.attempts == 2, (job.error, worker.output()[-3000:])
    assert worker.p.poll() is None  # the same worker process carried on
    rows = artifact_rows(crash_settings, job_id)
    assert rows and {a.attempt for a in rows} == {2}


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent pid
            out.append(int(stat.parent.name))
    return out
