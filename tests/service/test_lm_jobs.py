"""Language-model (decoder) jobs through the service: a .txt upload (rows = documents, tokens), the
422s for model/data combinations no task accepts, and a real LM job on `vtrans worker` (Celery on
Redis) whose downloaded model loads with AutoModelForCausalLM and generates."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from core.decoders import save_tiny_lm, write_text_corpus   # tests/ is on sys.path (rootdir conftest)

from .conftest import assert_problem, auth, tar_gz_of
from .jobpath import wait_job

LM_OPTIONS = {"seq_len": 16, "prefill_batch": 2, "prefill_seq": 32, "decode_tokens": 4, "latency_runs": 1,
              "generation_samples": 2, "round_to": 1}
LM_BUDGET = {"kind": "params", "target": 0.8, "seq_len": 16}


@pytest.fixture(scope="module")
def lm_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-service")
    return save_tiny_lm("llama-gqa", root / "model"), write_text_corpus(root / "corpus.txt", n_docs=30, words=50)


def _upload(http, model_dir, text_path):
    m = http.post("/v1/models", files={"file": ("tiny-llama.tar.gz", tar_gz_of(model_dir), "application/gzip")})
    d = http.post("/v1/datasets", files={"file": ("corpus.txt", text_path.read_bytes(), "text/plain")})
    assert m.status_code == 201 and d.status_code == 201, (m.text, d.text)
    return m.json()["id"], d.json()


def test_text_upload_reports_documents_and_tokens(client, lm_inputs):
    _model, corpus = lm_inputs
    r = client.post("/v1/datasets", files={"file": ("corpus.txt", corpus.read_bytes(), "text/plain")})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "txt" and body["rows"] == 30 and body["labels"] == []
    assert body["tokens"] == 30 * 50      # whitespace words of every document
    one_doc = client.post("/v1/datasets", files={"file": ("one.txt", b"just one line\n", "text/plain")})
    assert_problem(one_doc, 422)


def test_invalid_model_data_combinations_are_422_naming_dataset(client, lm_inputs, tiny_model_dir, tiny_dataset_csv):
    model_dir, corpus = lm_inputs
    lm_id, text = _upload(client, model_dir, corpus)
    csv_id = client.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")}).json()["id"]
    bert_id = client.post("/v1/models", files={"file": ("b.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")}).json()["id"]
    # a classification CSV with a causal LM
    r = client.post("/v1/jobs", json={"model": lm_id, "dataset": csv_id, "budget": LM_BUDGET, "method": "faster",
                                      "options": LM_OPTIONS})
    assert "causal language model" in assert_problem(r, 422, "dataset")["detail"]
    # a text file with a BERT
    r = client.post("/v1/jobs", json={"model": bert_id, "dataset": text["id"], "budget": LM_BUDGET, "method": "faster"})
    assert "without labels" in assert_problem(r, 422, "dataset")["detail"]
    # the LM task asked of a BERT
    r = client.post("/v1/jobs", json={"model": bert_id, "dataset": csv_id, "budget": LM_BUDGET, "method": "faster",
                                      "options": {"task": "language-modeling"}})
    assert_problem(r, 422, "options.task")


@pytest.mark.slow
def test_lm_job_runs_on_celery_worker_and_model_generates(service_settings, celery_worker, lm_inputs, tmp_path):
    from fastapi.testclient import TestClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from api.app import create_app

    model_dir, corpus = lm_inputs
    with TestClient(create_app(service_settings), headers=auth(service_settings)) as http:
        model_id, text = _upload(http, model_dir, corpus)
        r = http.post("/v1/jobs", json={"model": model_id, "dataset": text["id"], "budget": LM_BUDGET,
                                        "method": "faster", "options": LM_OPTIONS})
        assert r.status_code == 202, r.text
        assert r.json()["request"]["options"]["task"] == "language-modeling"
        job = wait_job(http, r.json()["id"], 900, log=celery_worker.output)
        assert job["status"] == "succeeded", (job, celery_worker.output()[-4000:])
        metrics = job["metrics"]
        assert metrics["task"] == "language-modeling" and metrics["params_fraction"] <= 0.81
        assert metrics["evaluation"]["window"] == 16 and metrics["pruned"]["perplexity"] > 1
        card = http.get(f"/v1/jobs/{job['id']}/artifacts/README.md").text
        assert "perplexity (held-out, 16-token windows, stride 16)" in card and "Greedy samples" in card
        assert "AutoModelForCausalLM" in card
        got = http.get(f"/v1/jobs/{job['id']}/artifacts/model.tar.gz")
        assert got.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(got.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert sum(p.numel() for p in model.parameters()) == metrics["pruned"]["params"]
    x = tok(["the a of and"], return_tensors="pt")
    y = model.generate(**x, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert y.shape[1] == x["input_ids"].shape[1] + 4
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == "llama"
