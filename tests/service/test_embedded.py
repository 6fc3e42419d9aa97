"""The README's embedded start command, as a newcomer runs it: `vtrans serve` with nothing but a
data folder and a port (SQLite, SQLite broker, local artifacts), driven over real HTTP."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import httpx
import pytest
import torch

from .conftest import wait_for
from .jobpath import BUDGET, FAST_OPTIONS, download_and_load_model, upload_inputs, wait_job
from .webhook_receiver import Receiver

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VTRANS_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


def test_vtrans_serve_runs_a_job_end_to_end(start_proc, tmp_path, tiny_model_dir, tiny_dataset_csv):
    port = _free_port()
    data_dir = tmp_path / "var"
    vtrans = str(Path(sys.executable).parent / "vtrans")
    key = "vt_embedded_test_key"  # a known key for tenant "default" (a newcomer's server makes its own)
    env = _clean_env(VTRANS_DATA_DIR=str(data_dir), VTRANS_PORT=str(port), VTRANS_API_KEY=key,
                     VTRANS_WEBHOOK_ALLOW_PRIVATE="true", VTRANS_WEBHOOK_POLL_SECONDS="0.5")
    receiver = Receiver().start()  # `vtrans serve` runs the scheduler, which delivers webhooks
    proc = start_proc([vtrans, "serve"], env, "serve")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: f"serving at {url}" in proc.output() or proc.p.poll() is not None, 90, what="serve URL")
    assert proc.p.poll() is None, proc.output()

    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        wait_for(lambda: _ok(http, "/readyz"), 60, what="readyz")
        model_id, ds_id = upload_inputs(http, tiny_model_dir, tiny_dataset_csv)
        hook = http.post("/v1/webhooks", json={"url": receiver.url, "events": ["job.succeeded"]})
        assert hook.status_code == 201, hook.text
        r = http.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET,
                                        "method": "fast", "options": FAST_OPTIONS})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["id"], 600, log=proc.output)
        assert job["status"] == "succeeded", (job, proc.output()[-4000:])
        model, tokenizer = download_and_load_model(http, job["id"], tmp_path / "dl")
    try:
        receiver.wait_for(1, 120)
        from standardwebhooks.webhooks import Webhook

        headers, body = receiver.received[0]
        assert Webhook(hook.json()["secret"]).verify(body, headers)["data"]["id"] == job["id"]
    finally:
        receiver.stop()
    with torch.no_grad():
        assert model(**tokenizer(["so bad"], return_tensors="pt")).logits.shape == (1, 2)
    # Everything lives in the data folder: database, broker, artifacts.
    assert (data_dir / "vtrans.db").is_file() and (data_dir / "broker.db").is_file()
    assert list((data_dir / "artifacts" / "jobs" / job["id"]).rglob("model.tar.gz"))


def _ok(http, path: str) -> bool:
    try:
        return http.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def test_production_api_process_serves_on_postgres_and_redis(start_proc, service_settings):
    """`vtrans api` as deployed: a separate process on the migrated Postgres DB and Redis."""
    from .conftest import auth, settings_env

    port = _free_port()
    env = settings_env(service_settings.model_copy(update={"port": port}))
    vtrans = str(Path(sys.executable).parent / "vtrans")
    proc = start_proc([vtrans, "api"], env, "api")
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=10, headers=auth(service_settings)) as http:
        wait_for(lambda: _ok(http, "/healthz") or proc.p.poll() is not None, 60, what="api up")
        assert proc.p.poll() is None, proc.output()
        ready = http.get("/readyz").json()
        assert ready["checks"] == {"database": "ok", "broker": "ok"}
        assert http.get("/v1/datasets").status_code == 200
        assert "/v1/jobs" in http.get("/openapi.json").json()["paths"]
