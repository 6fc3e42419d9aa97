"""A client generated with openapi-python-client from the document the running service serves
drives a real job through it (real API and worker processes on Postgres and Redis), with the
generated typed objects only: upload, submit, get, list pages, cancel, artifacts, errors."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import httpx
import pytest

from service.conftest import tar_gz_of
from service.jobpath import BUDGET, FAST_OPTIONS

pytestmark = pytest.mark.slow


def generate_client(document: dict, where: Path, package: str):
    (where / "openapi.json").write_text(json.dumps(document), encoding="utf-8")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path",
                          str(where / "openapi.json"), "--meta", "none", "--output-path", str(where / package)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    # A warning means some operation or schema was skipped: the generated client would be incomplete.
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(where))


def test_generated_client_drives_a_real_job(live_api, celery_worker, tiny_model_dir, tiny_dataset_csv, tmp_path):
    document = httpx.get(live_api.url + "/openapi.json").json()
    gen = generate_client(document, tmp_path, "vtrans_generated")
    from vtrans_generated.api.datasets import upload_dataset
    from vtrans_generated.api.events import stream_job_events
    from vtrans_generated.api.jobs import (cancel_job, create_job, download_job_artifact, get_job,
                                           list_job_artifacts, list_jobs)
    from vtrans_generated.api.models import get_model, upload_model
    from vtrans_generated.models import (Artifact, ArtifactList, BodyUploadDataset, BodyUploadModel, Dataset, Event,
                                         Job, JobList, JobRequest, JobRequestBudget, JobRequestBudgetKind,
                                         JobRequestMethod, JobRequestOptionsType0, JobStatus, Model, ModelUploaded,
                                         Problem)
    from vtrans_generated.types import File

    client = gen.AuthenticatedClient(base_url=live_api.url, token=live_api.settings.api_key,
                                     timeout=httpx.Timeout(180.0), raise_on_unexpected_status=True)

    model = upload_model.sync(client=client, body=BodyUploadModel(file=File(
        payload=BytesIO(tar_gz_of(tiny_model_dir)), file_name="m.tar.gz", mime_type="application/gzip")))
    assert isinstance(model, ModelUploaded) and model.model_type == "bert" and model.id.startswith("mdl_")
    again = get_model.sync(model.id, client=client)
    assert isinstance(again, Model) and again.created_at == model.created_at
    dataset = upload_dataset.sync(client=client, body=BodyUploadDataset(file=File(
        payload=BytesIO(tiny_dataset_csv.read_bytes()), file_name="d.csv", mime_type="text/csv")))
    assert isinstance(dataset, Dataset) and dataset.rows == 96 and sorted(dataset.labels) == ["negative", "positive"]

    def request() -> JobRequest:
        return JobRequest(model=model.id, dataset=dataset.id, method=JobRequestMethod.FAST,
                          budget=JobRequestBudget(kind=JobRequestBudgetKind.FLOPS, target=BUDGET["target"],
                                                  seq_len=BUDGET["seq_len"]),
                          options=JobRequestOptionsType0.from_dict(dict(FAST_OPTIONS)))

    job = create_job.sync(client=client, body=request(), idempotency_key="gen-client-1")
    assert isinstance(job, Job) and job.status == JobStatus.QUEUED
    assert job.request.budget.target == BUDGET["target"] and job.request.method == "fast"
    replay = create_job.sync(client=client, body=request(), idempotency_key="gen-client-1")
    assert isinstance(replay, Job) and replay.id == job.id

    doomed = create_job.sync(client=client, body=request())
    cancelled = cancel_job.sync(doomed.id, client=client)
    assert isinstance(cancelled, Job) and cancelled.cancel_requested

    first = list_jobs.sync(client=client, limit=1)
    assert isinstance(first, JobList) and len(first.data) == 1 and first.next_cursor
    second = list_jobs.sync(client=client, limit=1, cursor=first.next_cursor)
    assert {first.data[0].id, second.data[0].id} == {job.id, doomed.id}

    deadline = time.monotonic() + 600
    while (current := get_job.sync(job.id, client=client)).status not in (
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        assert time.monotonic() < deadline, celery_worker.output()[-3000:]
        time.sleep(0.5)
    assert current.status == JobStatus.SUCCEEDED, (current.error, celery_worker.output()[-3000:])
    assert current.progress == 1.0 and current.metrics is not None
    assert all(isinstance(a, Artifact) for a in current.artifacts)
    assert get_job.sync(doomed.id, client=client).status == JobStatus.CANCELLED

    listing = list_job_artifacts.sync(job.id, client=client)
    assert isinstance(listing, ArtifactList)
    by_name = {a.name: a for a in listing.data}
    assert {"model.tar.gz", "metrics.json", "README.md", "plan.json"} <= set(by_name)
    for name in ("metrics.json", "model.tar.gz"):
        file = download_job_artifact.sync(job.id, name, client=client)
        assert isinstance(file, File)
        body = file.payload.read()
        assert len(body) == by_name[name].size and hashlib.sha256(body).hexdigest() == by_name[name].sha256
    metrics = json.loads(download_job_artifact.sync(job.id, "metrics.json", client=client).payload.read())
    assert metrics["flops_fraction"] <= BUDGET["target"] + 0.01

    events = stream_job_events.sync(job.id, client=client, format_="json")
    assert events and all(isinstance(e, Event) for e in events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].status == JobStatus.SUCCEEDED

    missing = get_job.sync("job_00000000000000000000", client=client)
    assert isinstance(missing, Problem) and missing.status == 404 and missing.type_ == "urn:vtrans:problem:not-found"
    bad = create_job.sync(client=client, body=JobRequest(
        model=model.id, dataset=dataset.id, budget=JobRequestBudget(kind=JobRequestBudgetKind.FLOPS, target=1.5)))
    assert isinstance(bad, Problem) and bad.status == 422 and bad.errors and bad.errors[0].field.startswith("budget")
