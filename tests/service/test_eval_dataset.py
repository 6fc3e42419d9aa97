"""`eval_dataset` on a job (issue #11): accepted when its labels belong to the training
dataset's, refused at submit with 422 naming the field otherwise (nothing written), and run by
a real worker whose metrics then come from those rows."""
from __future__ import annotations

import pytest

from .conftest import assert_problem, auth, count_rows
from .jobpath import BUDGET, FAST_OPTIONS, upload_inputs, wait_job


def _upload_csv(c, name: str, rows: list[tuple[str, str]]) -> str:
    body = "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows)
    r = c.post("/v1/datasets", files={"file": (name, body.encode(), "text/csv")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture
def inputs(client, tiny_model_dir, tiny_dataset_csv):
    return upload_inputs(client, tiny_model_dir, tiny_dataset_csv)


def test_eval_dataset_is_stored_with_the_job(client, inputs, enqueued):
    model_id, ds_id = inputs
    held = _upload_csv(client, "held.csv", [("a great day", "positive"), ("an awful day", "negative")] * 6)
    r = client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "eval_dataset": held, "budget": BUDGET,
                                      "method": "fast", "options": FAST_OPTIONS})
    assert r.status_code == 202, r.text
    assert r.json()["request"]["eval_dataset"] == held and enqueued == [r.json()["id"]]
    # without one the request carries no eval_dataset at all
    r = client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "budget": BUDGET, "method": "fast"})
    assert r.status_code == 202 and r.json()["request"].get("eval_dataset") is None


def test_model_card_names_the_uploaded_eval_dataset(client, inputs, service_settings):
    """The worker's card inputs for a job with eval_dataset: the model-index result is the eval
    file's (by its name, every row), the training file stays the card's dataset."""
    from huggingface_hub import ModelCard

    from api.db import session_scope
    from api.models import Job
    from worker.model_card import model_card
    from worker.runner import _source

    model_id, ds_id = inputs
    held = _upload_csv(client, "held.csv", [("a great day", "positive"), ("an awful day", "negative")] * 6)
    r = client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "eval_dataset": held, "budget": BUDGET,
                                      "method": "fast"})
    assert r.status_code == 202, r.text
    with session_scope(service_settings.db_url) as s:
        job = s.get(Job, r.json()["id"])
        source = _source(service_settings.db_url, job)
        request = dict(job.request)
    assert (source.dataset_name, source.eval_dataset_name) == ("d.csv", "held.csv")
    metrics = {"eval_split": "eval_data", "evaluation": {"source": "eval_data"}, "eval_examples": 12,
               "pruned": {"accuracy": 75.0}, "dense": {"accuracy": 80.0}}
    card = ModelCard(model_card(source, request, metrics, r.json()["id"]))
    (result,) = card.data.to_dict()["model-index"][0]["results"]
    assert result["dataset"]["name"] == "held.csv" and card.data.to_dict()["datasets"] == ["d.csv"]
    assert f"held.csv (uploaded dataset `{held}`, 12 rows)" in card.text


@pytest.mark.parametrize("what", ["foreign-label", "builtin-other-labels", "unknown-id", "not-an-id"])
def test_bad_eval_dataset_is_a_422_or_404_naming_the_field(client, inputs, enqueued, service_settings, what):
    model_id, ds_id = inputs
    if what == "foreign-label":
        ref, status = _upload_csv(client, "other.csv", [("so so", "meh"), ("a great day", "positive")] * 6), 422
    elif what == "builtin-other-labels":
        ref, status = "tweet-sentiment", 422        # its 'neutral' is not a label of the tiny training set
    elif what == "unknown-id":
        ref, status = "ds_00000000000000000000", 404
    else:
        ref, status = "/etc/passwd", 422
    before = count_rows(service_settings.db_url)
    body = assert_problem(client.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "eval_dataset": ref,
                                                        "budget": BUDGET, "method": "fast"}), status, "eval_dataset")
    assert "eval_dataset" in body["detail"] or any(e["field"] == "eval_dataset" for e in body.get("errors", []))
    if what == "foreign-label":
        assert "'meh'" in body["detail"]
    assert count_rows(service_settings.db_url) == before and enqueued == []


@pytest.mark.slow
def test_worker_evaluates_on_the_eval_dataset(service_settings, celery_worker, tiny_model_dir, tiny_dataset_csv):
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(service_settings), headers=auth(service_settings)) as http:
        model_id, ds_id = upload_inputs(http, tiny_model_dir, tiny_dataset_csv)
        held = _upload_csv(http, "held.csv", [("what a great movie", "positive"), ("the worst food", "negative"),
                                              ("a sad boring day", "negative")] * 5)
        r = http.post("/v1/jobs", json={"model": model_id, "dataset": ds_id, "eval_dataset": held, "budget": BUDGET,
                                        "method": "vtrans", "options": {**FAST_OPTIONS, "max_eval_examples": None}})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["id"], 600, log=celery_worker.output)
        assert job["status"] == "succeeded", (job["error"], celery_worker.output()[-3000:])
        m = job["metrics"]
        assert m["evaluation"]["source"] == "eval_data" and m["eval_split"] == "eval_data"
        assert m["eval_examples"] == 15                   # every row of the uploaded eval file
        card = http.get(f"/v1/jobs/{job['id']}/artifacts/README.md").text
        assert "separate evaluation dataset" in card
