"""Issue #16 item 2, resumable jobs with real processes: kill -9 a Celery worker past half of a
real compression; a second worker continues from the checkpoint the first left in the artifact
store (its first progress report is already past the middle), the result loads and meets its
budget, and only the final artifact set remains. A corrupt checkpoint means a clean restart with
a status message saying why. The store adapter is also checked on a real S3 server (moto)."""
from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path

import pytest
from sqlalchemy import select

from .conftest import BUDGET, SLOW, submit_job, artifact_rows, job_row, start_worker, stored_files, wait_for, wait_status
from .test_s3_store import s3, s3_env  # noqa: F401  (fixtures: a moto server process)

pytestmark = pytest.mark.slow
# Two rounds of 600 mask steps: after round 1 the job is about half done (the rounds are most of it).
OPTIONS = SLOW


@pytest.fixture
def resume_settings(service_settings, tmp_path):
    return service_settings.model_copy(update={
        "lease_seconds": 10, "reaper_interval_seconds": 1, "cancel_check_seconds": 1, "max_attempts": 3,
        "queue": f"vtrans-resume-{secrets.token_hex(4)}", "max_active_jobs": 10_000,
        "data_dir": tmp_path / "data", "artifact_url": service_settings.artifact_url, "checkpoint_seconds": 300.0})


def _submit(settings, inputs) -> str:
    return submit_job(settings, inputs, OPTIONS)


def _store_root(settings) -> Path:
    return Path(settings.artifacts.removeprefix("file://"))


def _manifest(settings, job_id: str) -> dict | None:
    path = _store_root(settings) / f"jobs/{job_id}/checkpoint/manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kill_after_round_1(settings, inputs, start_proc) -> tuple[str, dict]:
    worker = start_worker(start_proc, settings, "worker1")
    job_id = _submit(settings, inputs)
    manifest = wait_for(lambda: (m := _manifest(settings, job_id)) is not None and m["stage"] == "round#1" and m,
                        300, 0.2, what="the checkpoint after mask round 1")
    job = job_row(settings, job_id)
    assert job.status == "running" and job.progress >= 0.45 and manifest["fraction"] >= 0.45, job.progress
    os.killpg(worker.p.pid, signal.SIGKILL)   # main process and pool child: nothing cleans up
    worker.p.wait(timeout=20)
    return job_id, manifest


def _events(settings, job_id: str) -> list:
    from api.db import session_scope
    from api.models import JobEvent

    with session_scope(settings.db_url) as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def _check_final_state(settings, job_id: str, job) -> None:
    assert job.status == "succeeded" and job.attempts == 2, job.error
    assert job.metrics["flops_fraction"] <= BUDGET["target"] + 0.01
    rows = artifact_rows(settings, job_id)
    assert rows and {a.attempt for a in rows} == {2} and all(a.final for a in rows)
    files = [f for f in stored_files(settings) if f.startswith(f"jobs/{job_id}/")]
    assert files and all(f.startswith(f"jobs/{job_id}/attempt-2/") for f in files), files   # no checkpoint left
    from vtrans_core import count_flops, load_pruned

    model = load_pruned(_store_root(settings) / f"jobs/{job_id}/attempt-2/model")
    assert count_flops(model, BUDGET["seq_len"]) == job.metrics["pruned"]["flops"]


def test_kill_9_past_half_then_a_second_worker_resumes(resume_settings, inputs, start_proc):
    job_id, manifest = _kill_after_round_1(resume_settings, inputs, start_proc)
    worker2 = start_worker(start_proc, resume_settings, "worker2")
    job = wait_status(resume_settings, job_id, ("succeeded", "failed", "cancelled"), 300, log=worker2.output)
    _check_final_state(resume_settings, job_id, job)
    events = _events(resume_settings, job_id)
    second = [e for e in events if e.attempt == 2]
    notes = [e.message for e in second if e.kind == "status" and e.message]
    assert f"resumed from checkpoint: stage round#1, step {manifest['step']}" in notes, notes
    progress = [e for e in second if e.kind == "progress"]
    assert progress[0].fraction >= manifest["fraction"] - 1e-6 >= 0.45   # not from the start
    assert [e.fraction for e in progress] == sorted(e.fraction for e in progress)
    assert "masks" in {e.stage for e in progress} and job.metrics["checkpoint"]["resumed_from"]["stage"] == "round#1"


def test_a_corrupt_checkpoint_means_a_clean_restart(resume_settings, inputs, start_proc):
    job_id, manifest = _kill_after_round_1(resume_settings, inputs, start_proc)
    folder = _store_root(resume_settings) / f"jobs/{job_id}/checkpoint"
    victim = folder / manifest["files"]["masks"]["file"]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0xFF
    victim.write_bytes(bytes(raw))
    worker2 = start_worker(start_proc, resume_settings, "worker2")
    job = wait_status(resume_settings, job_id, ("succeeded", "failed", "cancelled"), 300, log=worker2.output)
    _check_final_state(resume_settings, job_id, job)
    second = [e for e in _events(resume_settings, job_id) if e.attempt == 2]
    notes = [e.message or "" for e in second if e.kind == "status"]
    assert any(n.startswith("checkpoint not used: ") and "does not match its hash" in n and n.endswith("starting over")
               for n in notes), notes
    assert not any(n.startswith("resumed from checkpoint") for n in notes)
    assert [e for e in second if e.kind == "progress"][0].fraction < 0.1   # from the start
    assert "resumed_from" not in job.metrics["checkpoint"]


def test_the_store_checkpoint_on_s3_keeps_only_the_latest(s3_env, tmp_path, monkeypatch):  # noqa: F811
    import torch

    from api import jobstore
    from api.artifacts import ArtifactStore
    from vtrans_core.checkpoint import load_checkpoint, save_checkpoint
    from worker.checkpoints import StoreCheckpoint

    monkeypatch.setattr(jobstore, "note", lambda *a, **k: True)   # no job row here: the store is the subject
    store = ArtifactStore(f"s3://{s3_env.new_bucket()}/root")
    claim = jobstore.Claim("job_s3ck", "default", "w", 1)
    first = StoreCheckpoint(store, "unused", claim, tmp_path / "a")
    assert first.download() is False
    for step in (1, 2):
        manifest = save_checkpoint(first.directory, "fp", "finetune", step, 0.1 * step, {"step": step},
                                   {"model": {"w": torch.full((3,), float(step))}, "optim": {"0.m": torch.ones(2)}})
        first.saved(manifest)
    assert store.keys("jobs/job_s3ck/checkpoint") == [
        "jobs/job_s3ck/checkpoint/000002-model.safetensors", "jobs/job_s3ck/checkpoint/000002-optim.safetensors",
        "jobs/job_s3ck/checkpoint/manifest.json"]
    other = StoreCheckpoint(store, "unused", claim, tmp_path / "b")   # another machine, no shared disk
    assert other.download() is True
    ck = load_checkpoint(other.directory, "fp")
    assert ck.step == 2 and torch.equal(ck.tensors("model")["w"], torch.full((3,), 2.0))
    other.remove()
    assert store.keys("jobs/job_s3ck/checkpoint") == []
