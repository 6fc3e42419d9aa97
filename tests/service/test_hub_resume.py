"""A hub download after a wait (issue #14): a requeued run continues the files the last one got
instead of starting them again.

A file cut short stays in the job's download folder (under the worker's data dir, kept while the
job waits, removed when it ends: worker/hub_downloads.py), and the next run asks the fake hub for
the rest with a Range request (worker/hub_fetch.fetch_file)."""
from __future__ import annotations

import os
import secrets

import pytest
from sqlalchemy import update

from api import jobstore
from api.db import session_scope
from api.models import Job, utcnow
from vtrans_core.errors import CompressionError
from worker import hub_downloads
from worker.hub_download import HubDeferred, download_revision

from . import fake_hub
from .hub_fixtures import commit_files, hub, new_sha  # noqa: F401 (hub: a fixture)
from .hub_fixtures import settled_job_id  # noqa: F401 (a fixture: a queued hub job, ended after the test)
from .test_claims import _job


def test_a_requeued_run_continues_a_file_cut_short_with_a_range_request(hub, tmp_path):
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    files = commit_files(tmp_path / "commit", "resume-me")
    # huggingface_hub writes whole chunks (10 MiB): a cut keeps what came in the ones completed.
    weights = os.urandom(DOWNLOAD_CHUNK_SIZE + 300_000)
    (files / "model.safetensors").write_bytes(weights)
    fake_hub._add_commit(repo, sha, str(files))
    # model.safetensors breaks 1000 bytes past the first chunk; huggingface_hub's own resume of it
    # (1 s later) is answered 503: the attempt ends with one chunk on disk and a wait to hand back.
    cut = DOWNLOAD_CHUNK_SIZE + 1000
    fake_hub.FAULTS[repo] = {"cut_after": cut, "file": "model.safetensors", "then": {"status": 503, "count": 1}}
    dest = hub_downloads.hub_download_dir(tmp_path / "work", "job_x", repo, sha)
    with pytest.raises(HubDeferred) as wait:
        download_revision(repo, sha, dest, endpoint=hub.url, cache_dir=tmp_path / "hf-cache", attempts=3,
                          retry_seconds=10, defer_after=0, poll_seconds=0.1)
    partial = list((dest / ".partial").glob("model.safetensors.*.part"))
    assert [p.stat().st_size for p in partial] == [DOWNLOAD_CHUNK_SIZE], partial
    assert (dest / "config.json").is_file()           # completed before the cut: kept too

    folder = download_revision(repo, sha, dest, endpoint=hub.url, cache_dir=tmp_path / "hf-cache", attempts=3,
                               retry_seconds=10, defer_after=0, poll_seconds=0.1, state=wait.value.state)
    assert (folder / "model.safetensors").read_bytes() == weights
    assert not (folder / ".partial").exists()
    gets = [r for r in hub.requests() if r["repo"] == repo and r["method"] == "GET" and "file" in r]
    weights_gets = [(r.get("range"), r.get("cut"), r.get("fault")) for r in gets if r["file"] == "model.safetensors"]
    resumed = f"bytes={DOWNLOAD_CHUNK_SIZE}-"
    assert weights_gets == [(None, cut, None),       # run 1: cut short
                            (resumed, None, 503),    # run 1: huggingface_hub's resume, refused
                            (resumed, None, None)], weights_gets   # run 2: the rest, not the whole file
    assert [r["file"] for r in gets].count("config.json") == 1   # not downloaded again


def test_a_resumed_file_that_does_not_match_its_etag_is_started_again(hub, tmp_path):
    """Other bytes where the partial file is (a disk error, a bug): caught by the etag check,
    dropped, and the next attempt downloads the whole file."""
    repo, sha = f"acme/{secrets.token_hex(4)}", new_sha()
    files = commit_files(tmp_path / "commit", "etag-check")
    weights = (files / "model.safetensors").read_bytes()
    fake_hub._add_commit(repo, sha, str(files))
    dest = tmp_path / "dest"
    (dest / ".partial").mkdir(parents=True)
    (dest / ".partial" / f"model.safetensors.{fake_hub._git_oid(weights)}.part").write_bytes(b"x" * 30)
    folder = download_revision(repo, sha, dest, endpoint=hub.url, attempts=2, retry_seconds=0.1, poll_seconds=0.1)
    assert (folder / "model.safetensors").read_bytes() == weights
    ranges = [r.get("range") for r in hub.requests() if r["repo"] == repo and r["method"] == "GET"
              and r.get("file") == "model.safetensors"]
    assert ranges == ["bytes=30-", None], ranges


# ------------------------------------------------------------------ the folder's life (runner, Postgres)

def test_the_download_folder_outlives_a_deferred_run_and_goes_when_the_job_ends(service_settings, settled_job_id,
                                                                                 monkeypatch):
    from worker import celery_app, runner

    url, revision = service_settings.db_url, new_sha()
    with session_scope(url) as s:
        row = s.get(Job, settled_job_id)
        row.request = {**row.request, "model_source": {**row.request["model_source"], "revision": revision}}
    folders = []

    def first_run(repo, rev, dest, **kw):
        folders.append(dest)
        dest.mkdir(parents=True)
        (dest / "model.safetensors").write_bytes(b"half of it")
        raise HubDeferred(40, "waiting on the Hugging Face hub (x): ...", {"attempts": 1, "waited": 40.0})

    def second_run(repo, rev, dest, **kw):
        folders.append(dest)
        assert (dest / "model.safetensors").read_bytes() == b"half of it"   # what the first run got
        raise CompressionError("model", "the hub said no")

    monkeypatch.setattr(celery_app, "send_job", lambda *a, **kw: None)
    monkeypatch.setattr(runner, "download_revision", first_run)
    assert runner.run_job(service_settings, settled_job_id, "worker-a") == "deferred"
    expected = service_settings.work_dir / settled_job_id / "hub-download" / f"org--some-bert@{revision}"
    assert folders == [expected] and expected.is_dir()

    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == settled_job_id).values(retry_at=utcnow()))
    monkeypatch.setattr(runner, "download_revision", second_run)
    assert runner.run_job(service_settings, settled_job_id, "worker-a") == "failed"
    assert folders == [expected, expected]
    assert not (service_settings.work_dir / settled_job_id).exists()   # the job ended: nothing of it is left


def test_the_downloads_of_jobs_that_ended_elsewhere_are_swept(service_settings, client, settled_job_id, tmp_path):
    url = service_settings.db_url
    ended = client.post("/v1/jobs", json={"model": "org/other-bert", "dataset": "tweet-sentiment",
                                          "budget": {"kind": "params", "target": 0.5}}).json()["id"]
    assert jobstore.request_cancel(url, ended, _job(url, ended).tenant_id) == "cancelled"
    work = tmp_path / "work"
    for job in (settled_job_id, ended):
        folder = hub_downloads.hub_download_dir(work, job, "org/some-bert", "a" * 40)
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"w")
    assert hub_downloads.sweep_ended(url, work) == [ended]
    assert not (work / ended).exists() and (work / settled_job_id / "hub-download").is_dir()   # still queued: kept
