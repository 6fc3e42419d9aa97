"""The public API's response models: what /openapi.json declares is what the routes build.

Every route turns its rows into one of these models (never a hand-written dict), so a field
added here appears in the document and in the responses together; building one with a field it
lacks fails (ResponseModel). Models that echo user input or future additions (`JobRequestEcho`,
metrics) allow extra keys, so a new request field (e.g. an evaluation dataset) flows through
without breaking older clients. Changing or removing a field breaks clients:
tests/contract/test_compat.py compares the document against a committed snapshot and says what
changed.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
EventKind = Literal["progress", "status"]

_JOB_ID = "job_8f2c1d0e9a7b6c5d4e3f"
_MODEL_ID = "mdl_0a1b2c3d4e5f60718293"
_DATASET_ID = "ds_9f8e7d6c5b4a39281706"
_NOW = "2026-01-15T09:30:00Z"


class ResponseModel(BaseModel):
    """Base of every response model (here and in api/automation_schemas.py).

    A route builds its answer by keyword, and a keyword the model does not declare is refused
    (TypeError) instead of silently dropped, as pydantic would: a field cannot reach a builder
    without reaching the model, and so the document. Parsing stays lenient (model_validate
    ignores unknown keys): api/client.py parses answers with these models, and a newer server
    may send fields this version does not know."""

    # protected_namespaces=(): fields named model_* (model_type) are part of the wire format.
    model_config = ConfigDict(protected_namespaces=())

    def __init__(self, /, **data: Any) -> None:
        if type(self).model_config.get("extra") != "allow":  # extra keys are these models' point
            unknown = data.keys() - type(self).model_fields.keys()
            if unknown:
                raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}: add it to "
                                "the model (and so to the document), or do not send it")
        super().__init__(**data)

    # Marks this __init__ as pydantic's own (as pydantic's RootModel does), so validation
    # (model_validate, FastAPI's response check) keeps building instances without calling it:
    # only keyword construction is strict. tests/contract/test_response_models.py pins both.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


# ---------------------------------------------------------------- errors

class FieldError(ResponseModel):
    field: str = Field(description="the offending input in the request's own terms, e.g. budget.target or file")
    message: str


class Problem(ResponseModel):
    """RFC 9457 problem details: the body of every 4xx/5xx answer (media type application/problem+json)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "type": "urn:vtrans:problem:invalid-request", "title": "Invalid request", "status": 422,
        "detail": "budget.target: must be between 0 and 1", "instance": "/v1/jobs",
        "errors": [{"field": "budget.target", "message": "must be between 0 and 1"}]}]})
    type: str = Field(description="urn:vtrans:problem:<slug> for vtrans's own kinds, about:blank otherwise")
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request path")
    errors: list[FieldError] | None = None


# ---------------------------------------------------------------- health

class Health(ResponseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})
    status: Literal["ok"]


class Readiness(ResponseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ready",
                                                               "checks": {"database": "ok", "broker": "ok"}}]})
    status: Literal["ready"]
    checks: dict[str, str] = Field(description="dependency name -> ok")


# ---------------------------------------------------------------- models and datasets

_MODEL_EXAMPLE = {
    "id": _MODEL_ID, "name": "support-bert", "version": 3, "filename": "my-bert.tar.gz", "model_type": "bert",
    "architectures": ["BertForSequenceClassification"],
    "files": [{"name": "config.json", "size": 712}, {"name": "model.safetensors", "size": 437958648}],
    "size_bytes": 437959360, "created_at": _NOW}


class ModelFile(ResponseModel):
    name: str
    size: int


class Model(ResponseModel):
    """An uploaded Hugging Face model directory (safetensors weights, config, tokenizer)."""

    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [_MODEL_EXAMPLE]})
    id: str
    name: str | None = Field(None, description="the stable name this upload is a version of (issue #14), if any")
    version: int | None = Field(None, description="1, 2, ... within `name`")
    filename: str = Field(description="the uploaded file's name (display only)")
    model_type: str
    architectures: list[str]
    files: list[ModelFile]
    size_bytes: int
    created_at: datetime


class ModelUploaded(Model):
    ignored_files: list[str] = Field(default_factory=list,
                                     description="pickle checkpoints found in the archive; never stored or loaded")


class ModelVersionList(ResponseModel):
    """Every upload under one model name, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "support-bert", "data": [_MODEL_EXAMPLE]}]})
    name: str
    data: list[Model]


class ModelList(ResponseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [_MODEL_EXAMPLE]}]})
    data: list[Model]


_DATASET_EXAMPLE = {
    "id": _DATASET_ID, "kind": "uploaded", "filename": "reviews.csv", "format": "csv", "rows": 5000,
    "labels": ["negative", "positive"], "has_text_pair": False, "size_bytes": 812344, "created_at": _NOW}


class Dataset(ResponseModel):
    """An uploaded dataset: CSV/JSONL labelled rows, or plain text (.txt) for a language model,
    where rows are documents and `tokens` counts its words."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DATASET_EXAMPLE]})
    id: str
    kind: Literal["uploaded"] = "uploaded"
    filename: str
    format: Literal["csv", "jsonl", "txt"]
    rows: int = Field(description="labelled rows; for plain text (format txt): documents")
    labels: list[str | int]
    has_text_pair: bool
    size_bytes: int
    created_at: datetime
    tokens: int | None = Field(None, description="plain text only, in the upload response: whitespace-separated "
                               "words of all documents (the model's subword tokenizer gives ~1.3x as many)")


class BuiltinDataset(ResponseModel):
    id: str = Field(description="the name to pass as a job's dataset")
    kind: Literal["builtin"] = "builtin"
    description: str


class DatasetList(ResponseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [_DATASET_EXAMPLE], "builtin": [
        {"id": "tweet-sentiment", "kind": "builtin", "description": "tweets labelled negative/neutral/positive"}]}]})
    data: list[Dataset]
    builtin: list[BuiltinDataset]


# ---------------------------------------------------------------- jobs

class Budget(ResponseModel):
    model_config = ConfigDict(extra="allow")
    # The kinds vtrans_core.budget.BUDGET_KINDS accepts (tests/contract pins the two together):
    # a stored job with a kind missing here could not be served (getJob/listJobs would fail).
    kind: Literal["flops", "params", "speedup"]
    target: float = Field(description="flops/params: keep at most this fraction of the dense model's kind; "
                                      "speedup (method faster): run this many times faster than the dense model")
    seq_len: int | None = Field(None, description="sequence length FLOPs are counted at")


class JobRequestEcho(ResponseModel):
    """The request as it will run: method-dependent option defaults resolved. Extra keys are
    request fields added later; clients should keep and ignore what they do not know."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: str
    dataset: str
    budget: Budget
    method: str
    options: dict[str, Any]
    eval_dataset: str | None = Field(None, description="the separate evaluation dataset, when one was given")
    export: list[str] | None = Field(None, description="deployable formats asked for (onnx), when any")


class JobError(ResponseModel):
    model_config = ConfigDict(extra="allow")
    type: str = Field(description="CompressionError for bad input found while running; otherwise the error's class")
    message: str
    field: str | None = Field(None, description="the offending input, for a CompressionError")


_ARTIFACT_EXAMPLES = [
    {"name": "metrics.json", "size": 18233, "media_type": "application/json", "url": f"/v1/jobs/{_JOB_ID}/artifacts/metrics.json",
     "sha256": "9b74c9897bac770ffc029102a200c5de1f0c3a4e4fd3e9a1c5e0f0ab8a4a6c1d"},
    {"name": "model.tar.gz", "size": 201326592, "media_type": "application/gzip",
     "url": f"/v1/jobs/{_JOB_ID}/artifacts/model.tar.gz",
     "sha256": "3f0a8d2e6c1b4a5978e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6978877665540"}]


class Artifact(ResponseModel):
    model_config = ConfigDict(json_schema_extra={"examples": _ARTIFACT_EXAMPLES[:1]})
    name: str = Field(description="e.g. model.tar.gz, metrics.json, model/config.json, onnx/model.onnx")
    size: int = Field(description="bytes")
    sha256: str | None = Field(None, description="hex digest of the file (null only for jobs finished before "
                                                 "checksums were recorded)")
    media_type: str
    url: str = Field(description="download path, relative to the API root; supports Range requests")


class ArtifactList(ResponseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": _ARTIFACT_EXAMPLES}]})
    data: list[Artifact]


_JOB_EXAMPLE = {
    "id": _JOB_ID, "status": "running", "stage": "masks", "progress": 0.42, "created_at": _NOW,
    "updated_at": _NOW, "started_at": _NOW, "finished_at": None,
    "request": {"model": _MODEL_ID, "dataset": _DATASET_ID, "method": "fast",
                "budget": {"kind": "flops", "target": 0.5, "seq_len": 128}, "options": {"layout": "uniform"}},
    "metrics": None, "error": None, "attempts": 1, "cancel_requested": False, "queue": "cpu",
    "waiting_reason": None, "retry_at": None, "artifacts": None}


class Job(ResponseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})
    id: str
    status: JobStatus
    stage: str | None = Field(None, description="load, teacher, masks, prune, refine, finetune, evaluate, save; "
                                                "done when succeeded; hub-wait while queued to try the "
                                                "Hugging Face hub again (see retry_at)")
    progress: float = Field(description="fraction of the whole run, 0..1, never decreasing")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: JobRequestEcho
    metrics: dict[str, Any] | None = Field(None, description="set when succeeded; see metrics.json (docs/CONTRACTS.md §3)")
    error: JobError | None = None
    attempts: int
    cancel_requested: bool
    queue: str | None = Field(None, description="the worker queue the job was routed to (e.g. gpu, cpu); "
                                                "null for jobs from before routing")
    waiting_reason: str | None = Field(None, description="set while a queued job cannot start: no live worker "
                                                         "consumes its queue, or it waits to try the Hugging Face "
                                                         "hub again (getJob and listJobs)")
    retry_at: datetime | None = Field(None, description="set while a queued job waits until then to try the "
                                                        "Hugging Face hub again (it refused or failed the model "
                                                        "download for a while); waiting_reason says why")
    artifacts: list[Artifact] | None = Field(None, description="GET /v1/jobs/{id} only: the result files "
                                                               "(empty until the job succeeded); null in lists")


class JobList(ResponseModel):
    """One page, newest first. Pass next_cursor as ?cursor= for the next page; null on the last."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "data": [_JOB_EXAMPLE], "next_cursor": "WyIyMDI2LTAxLTE1VDA5OjMwOjAwKzAwOjAwIiwgImpvYl84ZjJjIl0"}]})
    data: list[Job]
    next_cursor: str | None = None


class Event(ResponseModel):
    """One job event. `seq` is gap-free per job and is the SSE id (Last-Event-ID resumes after it)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": _JOB_ID, "seq": 7, "kind": "progress", "stage": "masks", "fraction": 0.42, "step": 120,
        "metrics": {"step": 120, "total_steps": 300, "loss": 0.61, "kept_flops": 0.58, "eta_seconds": 95},
        "attempt": 1, "created_at": _NOW}]})
    job_id: str
    seq: int
    kind: EventKind = Field(description="progress: a report from the running job; status: a status change")
    status: JobStatus | None = Field(None, description="status events: the new status")
    stage: str | None = None
    fraction: float | None = None
    step: int | None = None
    metrics: dict[str, Any] | None = None
    message: str | None = None
    attempt: int
    created_at: datetime


class JobGone(ResponseModel):
    """The data of the event stream's `end` event when the job no longer exists: its row was
    deleted while the stream was open (the API deletes no job; an operator may), so there is no
    final state to send. Otherwise `end` carries the Job, as getJob returns it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": _JOB_ID, "reason": "deleted", "detail": f"job {_JOB_ID} was deleted while its events were followed"}]})
    id: str
    reason: Literal["deleted"] = Field(description="why no job is sent: it was deleted")
    detail: str


# What the `end` event's data is: a client tells the two apart by `status` (Job) or `reason` (JobGone).
StreamEnd = Job | JobGone
