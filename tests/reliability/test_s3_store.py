"""Issue #16, object storage for real: the artifact store on an S3-compatible server process (moto),
reached through s3fs with the endpoint and credentials from the standard AWS_* variables, i.e. the
production code path chosen by settings alone. The end-to-end test runs the API and two workers,
each with its own VTRANS_DATA_DIR: they share only Postgres, Redis and the bucket."""
from __future__ import annotations

import io
import os
import secrets
import tarfile

import pytest

from .conftest import BUDGET, FAST, free_port, settings_env, tar_gz_of, wait_for, wait_status, worker_cmd
from .s3server import S3Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    server = S3Server(free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env.items():   # this process (the API) and the workers it starts
        monkeypatch.setenv(key, value)
    return s3


def test_store_round_trip_and_ranged_reads_on_s3(s3_env, tmp_path, monkeypatch):
    import api.artifacts
    from api.artifacts import ArtifactStore

    monkeypatch.setattr(api.artifacts, "PUT_PART", 5 * 1024 * 1024)   # S3's smallest part

    bucket = s3_env.new_bucket()
    store = ArtifactStore(f"s3://{bucket}/root")
    assert not store.is_local and store.local_path("x/y") is None
    payload = os.urandom(11 * 1024 * 1024 + 123)    # s3fs goes multipart from 2 parts' worth: 3 parts
    (tmp_path / "big.bin").write_bytes(payload)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "sub" / "b.txt").write_text("bb")
    store.put_file(tmp_path / "big.bin", "files/big.bin")
    assert "?uploads" in s3_env.log()         # a multipart upload (CreateMultipartUpload), not one PUT
    assert store.size("files/big.bin") == len(payload)
    start = 5 * 1024 * 1024 - 7
    got = b"".join(store.iter_range("files/big.bin", start, 100_000, chunk=30_000))
    assert got == payload[start:start + 100_000]
    assert b"".join(store.iter_bytes("files/big.bin")) == payload
    assert [r for r, _ in store.put_dir(tmp_path / "d", "dir")] == ["a.txt", "sub/b.txt"]
    out = store.get_dir("dir", tmp_path / "back")
    assert (out / "sub" / "b.txt").read_text() == "bb"
    assert s3_env.keys(bucket) == ["root/dir/a.txt", "root/dir/sub/b.txt", "root/files/big.bin"]
    store.delete_prefix("dir")
    assert s3_env.keys(bucket) == ["root/files/big.bin"]


def test_api_and_two_workers_without_shared_disk(s3_env, api_settings, tiny_model_dir, tiny_dataset_csv,
                                                 start_proc, tmp_path):
    from fastapi.testclient import TestClient
    from transformers import AutoModelForSequenceClassification

    from api.app import create_app

    from .conftest import auth

    bucket = s3_env.new_bucket()
    settings = api_settings.model_copy(update={
        "artifact_url": f"s3://{bucket}/vtrans", "data_dir": tmp_path / "api-data",
        "queue": f"vtrans-s3-{secrets.token_hex(4)}"})
    workers = []
    for name in ("w1", "w2"):
        own = settings.model_copy(update={"data_dir": tmp_path / f"{name}-data"})
        proc = start_proc(worker_cmd(), settings_env(own), name)
        workers.append(proc)
    for proc in workers:
        wait_for(lambda: "ready." in proc.output() or proc.p.poll() is not None, 900, what="worker ready")
        assert proc.p.poll() is None, proc.output()

    with TestClient(create_app(settings), headers=auth(settings)) as c:   # the real enqueue (Celery)
        m = c.post("/v1/models", files={"file": ("m.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")})
        d = c.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
        assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
        jobs = []
        for _ in range(2):
            r = c.post("/v1/jobs", json={"model": m.json()["id"], "dataset": d.json()["id"], "budget": BUDGET,
                                         "method": "fast", "options": FAST})
            assert r.status_code == 202, r.text
            jobs.append(r.json()["id"])
        logs = lambda: "\n".join(p.output()[-3000:] for p in workers)  # noqa: E731
        for job_id in jobs:
            job = wait_status(settings, job_id, ("succeeded", "failed", "cancelled"), 900, log=logs)
            assert job.status == "succeeded", job.error

        job_id = jobs[0]
        body = c.get(f"/v1/jobs/{job_id}").json()
        tarball = next(a for a in body["artifacts"] if a["name"] == "model.tar.gz")
        r = c.get(tarball["url"])                                          # streamed from the bucket
        assert r.status_code == 200 and len(r.content) == tarball["size"]
        half = tarball["size"] // 2
        part = c.get(tarball["url"], headers={"Range": f"bytes={half}-"})   # a resumed download
        assert part.status_code == 206 and part.content == r.content[half:]
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            tar.extractall(tmp_path / "result", filter="data")
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "result" / "model")
        assert model.config.vtrans["method"] == "fast"

    keys = s3_env.keys(bucket, "vtrans")
    for job_id in jobs:
        assert f"vtrans/jobs/{job_id}/attempt-1/model.tar.gz" in keys
    assert any(k.startswith("vtrans/uploads/") for k in keys)
    # Nothing of the store lives on any machine's disk, and the workers' scratch is gone.
    for name in ("api-data", "w1-data", "w2-data"):
        root = tmp_path / name
        assert not (root / "artifacts").exists()
        assert not [p for p in root.glob("work/**/*") if p.is_file()]
