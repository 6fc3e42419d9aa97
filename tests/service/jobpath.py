"""Shared steps of the end-to-end tests: submit a tiny job over HTTP, wait, fetch and load the model."""
from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

from .conftest import tar_gz_of

# Small enough for seconds on a 2-core CPU; still every stage of the pipeline.
FAST_OPTIONS = {"max_train_examples": 64, "max_eval_examples": 16, "mask_steps": 3, "prune_rounds": 1,
                "finetune_steps": 2, "batch_size": 16, "seq_len": 16, "latency_runs": 1, "round_to": 1}
BUDGET = {"kind": "flops", "target": 0.6, "seq_len": 16}
TERMINAL = ("succeeded", "failed", "cancelled")


def upload_inputs(http, model_dir: Path, dataset_csv: Path) -> tuple[str, str]:
    m = http.post("/v1/models", files={"file": ("m.tar.gz", tar_gz_of(model_dir), "application/gzip")})
    d = http.post("/v1/datasets", files={"file": ("d.csv", dataset_csv.read_bytes(), "text/csv")})
    assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
    return m.json()["id"], d.json()["id"]


def wait_job(http, job_id: str, timeout: float, until=lambda job: job["status"] in TERMINAL, log=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not done after {timeout}s: {job}\n{log() if log else ''}")


def download_and_load_model(http, job_id: str, dest: Path):
    """Fetch model.tar.gz, unpack it safely and load it with plain transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    r = http.get(f"/v1/jobs/{job_id}/artifacts/model.tar.gz")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    model = AutoModelForSequenceClassification.from_pretrained(dest / "model")
    tokenizer = AutoTokenizer.from_pretrained(dest / "model")
    return model, tokenizer
