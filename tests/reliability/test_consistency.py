"""Issue #5: cancel racing with completion leaves a consistent final state; artifacts appear
all at once (never half a model); a failed job leaves no partial artifacts."""
from __future__ import annotations

import threading

from sqlalchemy import select

from .conftest import BUDGET, FAST, artifact_rows, job_row, make_client, stored_files

ROUNDS = 12


def _new_job(settings, request: dict | None = None) -> str:
    from api.db import session_scope
    from api.models import Job, new_id

    job_id = new_id("job")
    with session_scope(settings.db_url) as s:
        # a request as POST /v1/jobs stores it (the API's Job schema types it)
        request = request or {"model": "org/x", "dataset": "tweet-sentiment", "budget": {"kind": "flops", "target": 0.5},
                              "method": "fast", "options": {}}
        s.add(Job(id=job_id, status="queued", model="org/x", dataset="tweet-sentiment", request=request))
    return job_id


def _race(a, b) -> list:
    out: list = [None, None]
    barrier = threading.Barrier(2)

    def run(i, fn):
        barrier.wait()
        out[i] = fn()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _status_events(settings, job_id: str) -> list[str]:
    from api.db import session_scope
    from api.models import JobEvent

    with session_scope(settings.db_url) as s:
        return [e.status for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status")
                                            .order_by(JobEvent.seq))]


def test_cancel_racing_completion_of_a_running_job(api_settings):
    from api import jobstore

    db = api_settings.db_url
    for _ in range(ROUNDS):
        job_id = _new_job(api_settings)
        claim = jobstore.claim(db, job_id, "w", 60, 3)
        art = [{"name": "metrics.json", "storage_key": f"jobs/{job_id}/attempt-1/metrics.json", "size_bytes": 2,
                "media_type": "application/json"}]
        finished, _ = _race(lambda: jobstore.finish(db, claim, "succeeded", metrics={"m": 1}, artifacts=art),
                            lambda: jobstore.request_cancel(db, job_id, "default"))
        job = job_row(api_settings, job_id)
        # Completion wins over a cancel that arrives while running (a cancel is a request):
        # succeeded, with its artifacts and metrics, and exactly one terminal event.
        assert finished is True and job.status == "succeeded" and job.metrics == {"m": 1}
        assert [a.name for a in artifact_rows(api_settings, job_id)] == ["metrics.json"]
        terminal = [s for s in _status_events(api_settings, job_id) if s in ("succeeded", "failed", "cancelled")]
        assert terminal == ["succeeded"]
    with make_client(api_settings) as c:
        r = c.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 409 and c.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_cancel_racing_the_claim_of_a_queued_job(api_settings):
    from api import jobstore

    db = api_settings.db_url
    outcomes = set()
    for _ in range(ROUNDS):
        job_id = _new_job(api_settings)
        claim, _ = _race(lambda: jobstore.claim(db, job_id, "w", 60, 3),
                         lambda: jobstore.request_cancel(db, job_id, "default"))
        job = job_row(api_settings, job_id)
        if claim is None:   # the cancel came first: the worker never starts it
            assert job.status == "cancelled" and job.attempts == 0
            outcomes.add("cancelled-before-start")
        else:               # the worker came first: the flag stops it at its next progress report
            assert job.status == "running" and job.cancel_requested
            owned, cancel = jobstore.report_progress(db, claim, "masks", 0.1, {}, 60, True)
            assert owned and cancel
            assert jobstore.finish(db, claim, "cancelled")
            assert job_row(api_settings, job_id).status == "cancelled"
            outcomes.add("cancelled-while-running")
        assert artifact_rows(api_settings, job_id) == []
    assert outcomes  # (which interleavings occur depends on timing; each one is checked)


def test_artifacts_become_visible_all_at_once(api_settings):
    """Files uploaded under an attempt prefix are invisible until finish() marks the set final
    in one transaction; the store writes each file to a .partial name and renames it."""
    from pathlib import Path

    from api import jobstore
    from api.artifacts import ArtifactStore

    job_id = _new_job(api_settings)
    claim = jobstore.claim(api_settings.db_url, job_id, "w", 60, 3)
    store = ArtifactStore(api_settings.artifacts)
    src = Path(api_settings.resolved_data_dir()) / "src-model"
    src.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"x" * 1000)
    uploaded = store.put_dir(src, f"jobs/{job_id}/attempt-1/model")
    assert not [f for f in stored_files(api_settings) if f.endswith(".partial")]
    with make_client(api_settings) as c:
        assert c.get(f"/v1/jobs/{job_id}/artifacts").json()["data"] == []     # uploaded, not final
        assert c.get(f"/v1/jobs/{job_id}/artifacts/model/config.json").status_code == 404
        assert jobstore.finish(api_settings.db_url, claim, "succeeded", metrics={}, artifacts=[
            {"name": f"model/{rel}", "storage_key": f"jobs/{job_id}/attempt-1/model/{rel}", "size_bytes": size,
             "media_type": "application/octet-stream"} for rel, size in uploaded])
        names = [a["name"] for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]]
        assert names == ["model/config.json", "model/model.safetensors"]


def test_a_job_failing_while_uploading_leaves_no_partial_artifacts(api_settings, inputs, monkeypatch):
    """A real tiny compression whose upload breaks after two files (disk full, store down):
    the job fails with the reason, and neither files nor artifact rows are left behind."""
    from api.artifacts import ArtifactStore
    from api.db import session_scope
    from api.models import Job, new_id
    from worker.runner import run_job

    model_id, ds_id = inputs
    job_id = new_id("job")
    with session_scope(api_settings.db_url) as s:
        s.add(Job(id=job_id, status="queued", model=model_id, dataset=ds_id,
                  request={"model": model_id, "dataset": ds_id, "budget": BUDGET, "method": "fast", "options": FAST}))
    calls = {"n": 0}
    original = ArtifactStore.put_file

    def flaky_put(self, local, key):
        calls["n"] += 1
        if calls["n"] > 2 and key.startswith(f"jobs/{job_id}/"):
            raise OSError(28, "No space left on device")
        return original(self, local, key)

    monkeypatch.setattr(ArtifactStore, "put_file", flaky_put)
    assert run_job(api_settings, job_id, "test-worker") == "failed"
    job = job_row(api_settings, job_id)
    assert job.status == "failed" and "No space left" in job.error["message"]
    assert artifact_rows(api_settings, job_id) == []
    assert not [f for f in stored_files(api_settings) if f.startswith(f"jobs/{job_id}/")]
