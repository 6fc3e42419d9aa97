"""A schedule on a hub model id (issue #14), against a real `vtrans scheduler` process whose
huggingface_hub client talks to a fake hub server process (tests/service/fake_hub.py, via
HF_ENDPOINT): the first firing records the revision sha it resolved; a later firing that sees
the same sha is skipped as unchanged; a new sha on the hub creates a job. A real `vtrans worker`
then compresses the recorded sha even after the hub's main has moved on, ends a job cancelled
during a slow download within seconds, and waits out a hub outage (bounded)."""
from __future__ import annotations

import json
import secrets
import sys
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import update

from .automation import Clock, hook_settings, start_scheduler, tenants  # noqa: F401
from .conftest import settings_env, wait_for
from .hub_fixtures import SHA_1, fake_hub, submit_hub_job  # noqa: F401 (fake_hub: a fixture)
from .jobpath import BUDGET, FAST_OPTIONS, wait_job

UTC = timezone.utc
REPO = "acme/tiny-bert"   # served by the fake_hub fixture at SHA_1
SHA_2 = "2" * 8 + secrets.token_hex(16)


def _runs(t, schedule_id: str) -> list[dict]:
    r = t.http.get(f"/v1/schedules/{schedule_id}/runs", params={"limit": 50})
    assert r.status_code == 200, r.text
    return [x for x in r.json()["data"] if x["outcome"] != "missed"]


def test_hub_schedule_records_the_sha_skips_it_unchanged_and_runs_a_new_one(
        tmp_path, tenants, hook_settings, start_scheduler, fake_hub):
    from api.db import session_scope
    from api.models import Job, Schedule

    t = tenants()
    template = {"model": REPO, "dataset": "tweet-sentiment", "budget": BUDGET, "options": FAST_OPTIONS}
    r = t.http.post("/v1/schedules", json={"template": template, "cron": "0 3 * * *", "timezone": "UTC"})
    assert r.status_code == 201, r.text
    sch = r.json()
    due = datetime.fromisoformat(sch["next_due_at"])
    clock = Clock(tmp_path / "clock", due - timedelta(minutes=1))
    env = {"HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home")}   # an empty cache: the revision can come only from the hub
    proc = start_scheduler("scheduler", clock=clock, extra_env=env)

    def fire(at: datetime, n: int) -> dict:
        clock.set(at + timedelta(seconds=1))
        try:
            return wait_for(lambda: (lambda rs: rs[0] if len(rs) >= n else None)(_runs(t, sch["id"])), 120,
                            what=f"firing {n}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{proc.output()[-3000:]}") from None

    # 1. First firing: the sha is resolved from the hub and recorded, on the run and the job.
    first = fire(due, 1)
    assert first["outcome"] == "job_created" and first["source"] == f"{REPO}@{SHA_1}", first
    job = t.http.get(f"/v1/jobs/{first['job_id']}").json()
    assert job["request"]["model"] == REPO
    assert job["request"]["model_source"] == {"ref": REPO, "name": None, "version": None, "revision": SHA_1}
    assert any(q["repo"] == REPO for q in fake_hub.requests())
    with session_scope(hook_settings.db_url) as s:   # the job succeeded (no worker runs it here)
        s.execute(update(Job).where(Job.id == first["job_id"]).values(status="succeeded"))

    # 2. Next day, the hub still says SHA_1: skipped, with the reason, and no job.
    asked = len(fake_hub.requests())
    second = fire(due + timedelta(days=1), 2)
    assert second["outcome"] == "skipped" and second["job_id"] is None
    assert second["reason"] == "source unchanged since the last successful run"
    assert second["source"] == f"{REPO}@{SHA_1}"
    assert len(fake_hub.requests()) > asked          # it asked the hub again rather than trusting a cache

    # 3. A new commit on the hub: the next firing creates a job for it.
    fake_hub.set_sha(REPO, SHA_2)
    third = fire(due + timedelta(days=2), 3)
    assert third["outcome"] == "job_created" and third["source"] == f"{REPO}@{SHA_2}", third
    assert third["job_id"] not in (first["job_id"], None)
    assert t.http.get(f"/v1/jobs/{third['job_id']}").json()["request"]["model_source"]["revision"] == SHA_2
    with session_scope(hook_settings.db_url) as s:
        assert s.get(Schedule, sch["id"]).next_due_at == due + timedelta(days=3)
        # No worker runs here, but the job was sent to the session's queue: cancelled, a later
        # test's worker drops it at once instead of trying to load a hub model offline.
        s.execute(update(Job).where(Job.id == third["job_id"]).values(status="cancelled"))
    assert proc.p.poll() is None, proc.output()


def test_worker_compresses_the_recorded_sha_not_the_hubs_main(
        tmp_path, tenants, hook_settings, start_scheduler, start_proc, fake_hub, tiny_dataset_csv):
    """The firing records SHA_A; the hub's main then moves to SHA_B (another model: one more layer,
    the labels in the other order) before a worker runs the job. The output must be A's. A job
    whose recorded revision the hub does not have fails with a message; the worker lives on."""
    from conftest import build_tiny_bert_dir
    from sqlalchemy import select
    from transformers import AutoConfig

    from api.db import session_scope
    from api.models import Job, JobEvent
    from vtrans_core.flops import count_params
    from worker.celery_app import send_job

    sha_a, sha_b = "a" * 8 + secrets.token_hex(16), "b" * 8 + secrets.token_hex(16)
    dir_a = build_tiny_bert_dir(tmp_path / "commit-a", labels=["negative", "positive"], layers=2, seed=1)
    dir_b = build_tiny_bert_dir(tmp_path / "commit-b", labels=["positive", "negative"], layers=3, seed=2)
    for folder in (dir_a, dir_b):   # what a worker must never fetch
        (folder / "pytorch_model.bin").write_bytes(b"not loaded: pickled weights")
        (folder / "modeling_evil.py").write_text("raise SystemExit('remote code')\n")
    params_a, params_b = (count_params(AutoConfig.from_pretrained(d)) for d in (dir_a, dir_b))
    assert params_a != params_b
    fake_hub.set_sha(REPO, sha_a, dir_a)

    t = tenants()
    ds = t.http.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
    assert ds.status_code == 201, ds.text
    template = {"model": REPO, "dataset": ds.json()["id"], "budget": BUDGET, "options": FAST_OPTIONS}
    r = t.http.post("/v1/schedules", json={"template": template, "cron": "0 3 * * *", "timezone": "UTC"})
    assert r.status_code == 201, r.text
    sch = r.json()
    due = datetime.fromisoformat(sch["next_due_at"])
    clock = Clock(tmp_path / "clock", due + timedelta(seconds=1))
    hub_env = {"HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    scheduler = start_scheduler("scheduler", clock=clock, extra_env={**hub_env, "HF_HOME": str(tmp_path / "hf-s")})
    try:
        run = wait_for(lambda: (_runs(t, sch["id"]) or [None])[0], 120, what="the firing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{scheduler.output()[-3000:]}") from None
    assert run["outcome"] == "job_created" and run["source"] == f"{REPO}@{sha_a}", run
    job_id = run["job_id"]

    # The hub moves on before any worker runs the job (the job waits in the broker meanwhile).
    fake_hub.set_sha(REPO, sha_b, dir_b)
    # Online, pointed at the fake hub, with an empty cache: without the fix, from_pretrained(REPO)
    # would load main (B) from it, and the assertions below would see B.
    env = {**settings_env(hook_settings), **hub_env, "HF_HOME": str(tmp_path / "hf-w")}
    worker = start_proc([sys.executable, "-m", "api.cli", "worker"], env, "worker")
    wait_for(lambda: "ready." in worker.output() or worker.p.poll() is not None, 300, what="worker ready")
    assert worker.p.poll() is None, worker.output()
    job = wait_job(t.http, job_id, 600, log=worker.output)
    assert job["status"] == "succeeded", (job, worker.output()[-4000:])
    assert job["request"]["model"] == REPO and job["request"]["model_source"]["revision"] == sha_a

    config = json.loads(t.http.get(f"/v1/jobs/{job_id}/artifacts/model/config.json").content)
    assert config["id2label"] == {"0": "negative", "1": "positive"}      # A's head (B's is reversed)
    assert job["metrics"]["dense"]["params"] == params_a                  # A's size, not B's
    card = t.http.get(f"/v1/jobs/{job_id}/artifacts/README.md").text
    assert f"base_model: {REPO}" in card and f"{REPO} (hub revision `{sha_a}`)" in card and sha_b not in card
    fetched = [q for q in fake_hub.requests() if q.get("file")]
    assert fetched and {q["revision"] for q in fetched} == {sha_a}        # never main, never B
    assert not any(q["file"].endswith((".bin", ".py")) for q in fetched)
    with session_scope(hook_settings.db_url) as s:
        notes = s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id, JobEvent.kind == "status")).all()
    assert any(f"at revision {sha_a}" in (m or "") for m in notes), notes

    # A recorded revision the hub does not have (history rewritten): the job fails, saying so.
    gone = "d" * 40
    r = t.http.post("/v1/jobs", json=template)
    assert r.status_code == 202, r.text
    second = r.json()["id"]
    with session_scope(hook_settings.db_url) as s:
        row = s.get(Job, second)
        row.request = {**row.request, "model_source": {**row.request["model_source"], "revision": gone}}
    send_job(hook_settings, second)
    failed = wait_job(t.http, second, 300, log=worker.output)
    assert failed["status"] == "failed", failed
    assert failed["error"]["type"] == "CompressionError" and failed["error"]["field"] == "model"
    assert f"at revision {gone}" in failed["error"]["message"] and "no such revision" in failed["error"]["message"]
    assert worker.p.poll() is None, worker.output()[-3000:]


def test_worker_ends_a_download_on_cancel_and_waits_out_a_hub_outage(
        tmp_path, tenants, hook_settings, start_proc, fake_hub, tiny_dataset_csv):
    """One real worker, three hub jobs: cancelled while a 4 MB file trickles in at 40 KB/s (the
    job ends cancelled within seconds, its folder gone); a hub answering 503 twice (waited for,
    then compressed: the worker survived the cancel); a hub answering 503 throughout (failed
    after the bounded attempts, naming the hub and the error)."""
    from conftest import build_tiny_bert_dir
    from sqlalchemy import select

    from api.db import session_scope
    from api.models import JobEvent
    from worker.celery_app import send_job

    settings = hook_settings.model_copy(update={"hub_download_attempts": 3, "hub_retry_seconds": 2.0,
                                                "cancel_check_seconds": 0.5})
    model_dir = build_tiny_bert_dir(tmp_path / "model")
    slow_dir = tmp_path / "slow"
    slow_dir.mkdir()
    (slow_dir / "config.json").write_text((model_dir / "config.json").read_text())
    (slow_dir / "model.safetensors").write_bytes(b"\0" * (4 * 1024 * 1024))   # ~100 s at 40 KB/s
    t = tenants()
    ds = t.http.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
    assert ds.status_code == 201, ds.text

    def hub_job(repo: str, files, **fault) -> str:
        job_id = submit_hub_job(t.http, settings.db_url, fake_hub, repo, files, ds.json()["id"], **fault)
        send_job(settings, job_id)
        return job_id

    def notes(job_id: str) -> list[str]:
        with session_scope(settings.db_url) as s:
            return [m or "" for m in s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))]

    env = {**settings_env(settings), "HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0",
           "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-w")}
    worker = start_proc([sys.executable, "-m", "api.cli", "worker"], env, "worker")
    wait_for(lambda: "ready." in worker.output() or worker.p.poll() is not None, 300, what="worker ready")
    assert worker.p.poll() is None, worker.output()

    # 1. Cancelled while the weights trickle in: ends within seconds, nothing left on disk.
    slow = hub_job("acme/slow-bert", slow_dir, bytes_per_second=40_000)
    wait_for(lambda: any(q.get("file") == "model.safetensors" and q["method"] == "GET" and q["repo"] == "acme/slow-bert"
                         for q in fake_hub.requests()), 300, what="the weights transfer")
    time.sleep(1.0)
    assert t.http.post(f"/v1/jobs/{slow}/cancel").status_code == 202
    job = wait_job(t.http, slow, 20, log=worker.output)   # the transfer alone would take ~100 s
    assert job["status"] == "cancelled", job
    assert not (settings.work_dir / slow).exists()
    assert not list(settings.work_dir.rglob("hub-model*"))

    # 2. The hub answers 503 twice: the worker waits, says so, and compresses the model.
    flaky = hub_job("acme/flaky-bert", model_dir, status=503, count=2)
    job = wait_job(t.http, flaky, 600, log=worker.output)
    assert job["status"] == "succeeded", (job, worker.output()[-4000:])
    waits = [m for m in notes(flaky) if m.startswith(f"waiting on the Hugging Face hub ({fake_hub.url})")]
    assert len(waits) == 2 and "503" in waits[0], notes(flaky)

    # 3. The hub answers 503 throughout: failed after the 3 attempts, naming the hub and the error.
    down = hub_job("acme/down-bert", model_dir, status=503, count=-1)
    job = wait_job(t.http, down, 300, log=worker.output)
    assert job["status"] == "failed" and job["error"]["field"] == "model", job
    message = job["error"]["message"]
    assert f"the Hugging Face hub ({fake_hub.url})" in message and "after 3 attempts" in message, message
    assert "503" in message
    assert len([q for q in fake_hub.requests() if q["repo"] == "acme/down-bert" and q.get("fault")]) == 3
    assert worker.p.poll() is None, worker.output()[-3000:]
