"""Model versions (issue #14): uploads under a name are numbered, jobs resolve name / name@version
at creation and record the version they got. Real Postgres, real API app."""
from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import assert_problem, tar_gz_of
from .jobpath import BUDGET, FAST_OPTIONS


def upload(client, model_dir, name=None):
    data = {"name": name} if name is not None else None
    return client.post("/v1/models", data=data,
                       files={"file": ("m.tar.gz", tar_gz_of(model_dir), "application/gzip")})


@pytest.fixture
def name():
    return f"bert-{secrets.token_hex(3)}"


def test_uploads_under_a_name_are_numbered_versions_listed_newest_first(client, tiny_model_dir, name):
    first, second = upload(client, tiny_model_dir, name), upload(client, tiny_model_dir, name)
    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    assert (first.json()["name"], first.json()["version"]) == (name, 1)
    assert (second.json()["name"], second.json()["version"]) == (name, 2)
    assert first.json()["id"] != second.json()["id"]
    listed = client.get(f"/v1/models/{name}/versions")
    assert listed.status_code == 200
    assert [(m["version"], m["id"]) for m in listed.json()["data"]] == [(2, second.json()["id"]), (1, first.json()["id"])]
    unnamed = upload(client, tiny_model_dir)
    assert unnamed.status_code == 201 and unnamed.json()["name"] is None and unnamed.json()["version"] is None


def test_concurrent_uploads_under_one_name_get_distinct_versions(client, tiny_model_dir, name):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: upload(client, tiny_model_dir, name), range(4)))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    assert sorted(a.json()["version"] for a in answers) == [1, 2, 3, 4]


def test_job_resolves_name_to_latest_version_and_records_it(client, tiny_model_dir, name, tiny_dataset_csv):
    v1 = upload(client, tiny_model_dir, name).json()
    ds = client.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")}).json()["id"]
    body = {"model": name, "dataset": ds, "budget": BUDGET, "options": FAST_OPTIONS}
    job1 = client.post("/v1/jobs", json=body).json()
    v2 = upload(client, tiny_model_dir, name).json()
    job2 = client.post("/v1/jobs", json=body).json()
    pinned = client.post("/v1/jobs", json=dict(body, model=f"{name}@1")).json()
    by_id = client.post("/v1/jobs", json=dict(body, model=v2["id"])).json()
    assert job1["request"]["model"] == v1["id"]
    assert job1["request"]["model_source"] == {"ref": name, "name": name, "version": 1, "revision": None}
    assert job2["request"]["model"] == v2["id"] and job2["request"]["model_source"]["version"] == 2
    assert pinned["request"]["model"] == v1["id"] and pinned["request"]["model_source"]["ref"] == f"{name}@1"
    assert by_id["request"]["model_source"] == {"ref": v2["id"], "name": name, "version": 2, "revision": None}
    # The job's version does not move when a newer one is uploaded afterwards.
    upload(client, tiny_model_dir, name)
    assert client.get(f"/v1/jobs/{job2['id']}").json()["request"]["model"] == v2["id"]


def test_bad_names_and_unknown_versions_are_refused(client, tiny_model_dir, name, snapshot):
    before = snapshot()
    for bad in ("has space", "org/name", "x@2", "-dash", "mdl_" + "0" * 20, "a" * 65):
        assert_problem(upload(client, tiny_model_dir, bad), 422, "name")
    assert snapshot() == before
    upload(client, tiny_model_dir, name)
    body = {"dataset": "tweet-sentiment", "budget": BUDGET}
    assert_problem(client.post("/v1/jobs", json=dict(body, model=f"{name}@7")), 404, "model")
    assert_problem(client.post("/v1/jobs", json=dict(body, model=f"nobody-{name}")), 404, "model")
    assert_problem(client.post("/v1/jobs", json=dict(body, model=f"{name}@0")), 422, "model")
    assert_problem(client.get(f"/v1/models/nobody-{name}/versions"), 404)


def test_another_tenants_names_are_invisible(client, service_settings, tiny_model_dir, name):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth import create_key

    upload(client, tiny_model_dir, name)
    other = create_key(service_settings.db_url, f"other-{secrets.token_hex(3)}").key
    with TestClient(create_app(service_settings, enqueue=lambda _id: None),
                    headers={"Authorization": f"Bearer {other}"}) as theirs:
        assert_problem(theirs.get(f"/v1/models/{name}/versions"), 404)
        assert_problem(theirs.post("/v1/jobs", json={"model": name, "dataset": "tweet-sentiment",
                                                     "budget": BUDGET}), 404, "model")
        # The same name is theirs to use, numbered from 1.
        mine = upload(theirs, tiny_model_dir, name)
        assert mine.status_code == 201 and mine.json()["version"] == 1


def test_the_model_card_of_a_named_upload_is_titled_with_its_name(client, tiny_model_dir, name, service_settings):
    """Issue #15: the card's title is the model's name, not the upload's archive name. A model
    saved by transformers 5 records no _name_or_path, so for a named upload (README:
    `-F name=support-bert -F file=@model.tar.gz`) the name it was uploaded under is its name."""
    from huggingface_hub import ModelCard

    from api.db import session_scope
    from api.models import Job
    from worker.model_card import model_card
    from worker.runner import _source

    v1 = client.post("/v1/models", data={"name": name},
                     files={"file": ("model.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")}).json()
    job = client.post("/v1/jobs", json={"model": name, "dataset": "tweet-sentiment", "budget": BUDGET}).json()
    with session_scope(service_settings.db_url) as s:
        row = s.get(Job, job["id"])
        source, request = _source(service_settings.db_url, row), dict(row.request)
    assert source.model_name == name and source.hub_id is None
    assert f"version 1 of `{name}`" in source.model_label and v1["id"] in source.model_label
    card = ModelCard(model_card(source, request, {"pruned": {"accuracy": 80.0}}, job["id"]))
    assert card.text.lstrip().startswith(f"# {name}, pruned with VTrans")
    assert card.data.to_dict()["model-index"][0]["name"] == f"{name}-vtrans-pruned"
