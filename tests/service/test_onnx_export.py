"""`export: ["onnx"]` on a job (issue #15): validated at submit, stored with the request, and run
by a real worker whose artifact onnx/model.onnx computes what the delivered PyTorch model does."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from .conftest import assert_problem, auth, count_rows
from .jobpath import BUDGET, FAST_OPTIONS, download_and_load_model, upload_inputs, wait_job


@pytest.fixture
def inputs(client, tiny_model_dir, tiny_dataset_csv):
    return upload_inputs(client, tiny_model_dir, tiny_dataset_csv)


def test_export_is_stored_with_the_job(client, inputs, enqueued):
    model_id, ds_id = inputs
    r = client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET, "method": "fast",
                                      "export": ["onnx"]})
    assert r.status_code == 202, r.text
    assert r.json()["request"]["export"] == ["onnx"] and enqueued == [r.json()["id"]]
    assert client.get(f"/v1/jobs/{r.json()['id']}").json()["request"]["export"] == ["onnx"]


@pytest.mark.parametrize("value, field", [(["tflite"], "export[0]"), ("onnx", "export")])
def test_unknown_export_format_is_a_422_naming_the_field(client, inputs, enqueued, service_settings, value, field):
    model_id, ds_id = inputs
    before = count_rows(service_settings.db_url)
    assert_problem(client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET,
                                                 "method": "fast", "export": value}), 422, field)
    assert count_rows(service_settings.db_url) == before and enqueued == []


@pytest.mark.slow
def test_worker_delivers_a_checked_onnx_artifact(service_settings, celery_worker, tiny_model_dir, tiny_dataset_csv,
                                                 tmp_path):
    import onnxruntime as ort
    import torch
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(service_settings), headers=auth(service_settings)) as http:
        model_id, ds_id = upload_inputs(http, tiny_model_dir, tiny_dataset_csv)
        r = http.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET, "method": "fast",
                                        "options": FAST_OPTIONS, "export": ["onnx"]})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["id"], 600, log=celery_worker.output)
        assert job["status"] == "succeeded", (job["error"], celery_worker.output()[-3000:])

        onnx = job["metrics"]["export"]["onnx"]
        assert onnx["check"]["passed"] and onnx["check"]["rows"] > 0
        assert onnx["latency_ms"]["pytorch"] > 0 and onnx["latency_ms"]["onnxruntime"] > 0
        listed = {a["name"]: a for a in job["artifacts"]}
        assert "onnx/model.onnx" in listed and not any(n.startswith("model/onnx") for n in listed)
        blob = http.get(f"/v1/jobs/{job['id']}/artifacts/onnx/model.onnx").content
        assert len(blob) == listed["onnx/model.onnx"]["size"]
        assert hashlib.sha256(blob).hexdigest() == listed["onnx/model.onnx"]["sha256"]
        card = http.get(f"/v1/jobs/{job['id']}/artifacts/README.md").text
        assert "## ONNX" in card and "onnx/model.onnx" in card

        # The artifact against the delivered transformers model, on text it has never seen.
        model, tokenizer = download_and_load_model(http, job["id"], tmp_path)
        path = tmp_path / "model.onnx"
        path.write_bytes(blob)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        enc = tokenizer(["an entirely new sentence about trains", "short", "what a lovely surprise this was"],
                        padding=True, return_tensors="pt")
        feeds = {n: enc[n] for n in onnx["inputs"]}
        got = session.run(["logits"], {n: t.numpy() for n, t in feeds.items()})[0]
        with torch.no_grad():
            ref = model.eval()(**feeds).logits.numpy()
        np.testing.assert_allclose(got, ref, atol=onnx["check"]["atol"], rtol=onnx["check"]["rtol"])


def test_language_model_jobs_may_ask_for_onnx(client, enqueued, tmp_path):
    """No longer refused: an LM job with export: ["onnx"] is queued with it (the worker exports
    logits without a KV cache; tests/core/test_lm_compress.py runs that path)."""
    from core.decoders import save_tiny_lm, write_text_corpus   # tests/ is on sys.path

    from .conftest import tar_gz_of

    model_dir = save_tiny_lm("gpt2", tmp_path / "model")
    corpus = write_text_corpus(tmp_path / "corpus.txt", n_docs=20, words=40)
    m = client.post("/v1/models", files={"file": ("tiny-gpt2.tar.gz", tar_gz_of(model_dir), "application/gzip")})
    d = client.post("/v1/datasets", files={"file": ("corpus.txt", corpus.read_bytes(), "text/plain")})
    assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
    r = client.post("/v1/jobs", json={"model": m.json()["id"], "dataset": d.json()["id"], "method": "faster",
                                      "budget": {"kind": "params", "target": 0.8, "seq_len": 16}, "export": ["onnx"]})
    assert r.status_code == 202, r.text
    req = r.json()["request"]
    assert req["export"] == ["onnx"] and req["options"]["task"] == "language-modeling"
    assert enqueued == [r.json()["id"]]
