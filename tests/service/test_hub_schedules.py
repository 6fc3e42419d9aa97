"""A schedule on a hub model id (issue #14), against a real `vtrans scheduler` process whose
huggingface_hub client talks to a fake hub server process (tests/service/fake_hub.py, via
HF_ENDPOINT): the first firing records the revision sha it resolved; a later firing that sees
the same sha is skipped as unchanged; a new sha on the hub creates a job."""
from __future__ import annotations

import json
import secrets
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update

from .automation import Clock, free_port, hook_settings, start_scheduler, tenants  # noqa: F401
from .conftest import wait_for
from .jobpath import BUDGET, FAST_OPTIONS

UTC = timezone.utc
REPO = "acme/tiny-bert"
SHA_1 = "1" * 8 + secrets.token_hex(16)
SHA_2 = "2" * 8 + secrets.token_hex(16)


class FakeHub:
    def __init__(self, proc, port: int):
        self.proc, self.url = proc, f"http://127.0.0.1:{port}"

    def set_sha(self, repo: str, sha: str) -> None:
        req = urllib.request.Request(f"{self.url}/_fake/repos/{repo}", data=json.dumps({"sha": sha}).encode(),
                                     method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def requests(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/_fake/requests", timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture
def fake_hub(start_proc):
    port = free_port()
    script = Path(__file__).with_name("fake_hub.py")
    proc = start_proc([sys.executable, str(script), str(port), f"{REPO}={SHA_1}"], {"PATH": "/usr/bin:/bin"},
                      "fake-hub")
    wait_for(lambda: "listening" in proc.output() or proc.p.poll() is not None, 30, what="fake hub ready")
    assert proc.p.poll() is None, proc.output()
    return FakeHub(proc, port)


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
