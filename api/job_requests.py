"""Validating a job request and writing its row: shared by POST /v1/jobs and the scheduler
(a schedule's template is checked with exactly these functions when it is created, and again
when it fires), so a scheduled job is held to the same rules as a submitted one.

Model references (issue #14): an uploaded model id (`mdl_...`), a hub ID (`org/name`), a model
name (`my-bert`: its latest version at the time the job is created) or `name@version`. The
version is resolved here and recorded in the job, so a job always says which bytes it ran on.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import core_bridge, jobstore
from .models import Dataset, Job, Model, new_id, utcnow
from .problems import Problem, field_problem
from vtrans_core.errors import CompressionError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
MODEL_ID = re.compile(r"^mdl_[0-9a-f]{20}$")
DATASET_ID = re.compile(r"^ds_[0-9a-f]{20}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAMED_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63})(?:@(?P<version>[1-9][0-9]{0,8}))?$")


# budget/method/options are validated by vtrans_core (its messages name the exact field), so
# pydantic accepts anything here; WithJsonSchema documents what the core accepts.
_BUDGET_SCHEMA = {"type": "object", "required": ["kind", "target"], "properties": {
    "kind": {"type": "string", "enum": ["flops", "params", "speedup"]},
    # No maximum: a speedup target is above 1 (the core checks each kind's range, naming budget.target).
    "target": {"type": "number", "exclusiveMinimum": 0,
               "description": "flops/params: keep at most this fraction (0..1) of the dense model's FLOPs or "
                              "parameters; speedup (method faster): times faster than the dense model, e.g. 2.0"},
    "seq_len": {"type": "integer", "minimum": 1, "description": "sequence length FLOPs are counted at (128)"}}}
_METHOD_SCHEMA = {"type": "string", "enum": ["vtrans", "fast", "faster"], "default": "vtrans"}
_OPTIONS_SCHEMA = {"anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}],
                   "description": "CompressionOptions overrides (layout, steps, seq_len, ...); unknown keys -> 422"}


class JobRequest(BaseModel):
    """POST /v1/jobs body (and a schedule's template). New optional fields go at the end (older
    clients keep working)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), json_schema_extra={"examples": [
        {"model": "mdl_0a1b2c3d4e5f60718293", "dataset": "tweet-sentiment",
         "budget": {"kind": "flops", "target": 0.5}, "method": "fast", "options": {"layout": "uniform"}}]})
    model: str = Field(description="an uploaded model id (mdl_...), a model name (latest version), "
                                   "name@version, or a hub ID like org/name", max_length=200)
    dataset: str = Field(description="an uploaded dataset id (ds_...) or a built-in task name", max_length=200)
    budget: Annotated[Any, WithJsonSchema(_BUDGET_SCHEMA)] = Field(
        description='{"kind": "flops"|"params", "target": 0.5} or {"kind": "speedup", "target": 2.0}')
    method: Annotated[Any, WithJsonSchema(_METHOD_SCHEMA)] = "vtrans"
    options: Annotated[Any, WithJsonSchema(_OPTIONS_SCHEMA)] = None
    eval_dataset: str | None = Field(None, max_length=200, description=(
        "optional: an uploaded dataset id (ds_...) or a built-in task name to evaluate on, with labels from the "
        "training dataset's label set. The job then trains on every row of `dataset` and reports quality on rows it "
        "never trained on; without it, evaluation runs on a split of `dataset`, which a model fine-tuned on that "
        "file has already seen"))
    export: list[Literal["onnx"]] | None = Field(None, max_length=4, description=(
        "optional deployable formats besides the safetensors model: [\"onnx\"] also exports the pruned model to "
        "ONNX (artifact onnx/model.onnx), checked in the job with onnxruntime against the PyTorch model on "
        "held-out rows and timed (metrics.export.onnx)"))


def check_model_name(name: str) -> str:
    """A stable model name: no '/' (hub IDs have one), no '@' (the version separator)."""
    if not MODEL_NAME.match(name) or MODEL_ID.match(name):
        raise field_problem(422, "name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit, and not look like a model id (mdl_...)")
    return name


@dataclass
class ResolvedModel:
    ref: str                        # as the client wrote it
    target: str                     # what the worker loads: an uploaded model id or a hub ID
    config: dict | None             # config.json when known (cheap validation before queuing)
    name: str | None = None
    version: int | None = None
    revision: str | None = None     # hub commit sha, when known

    @property
    def source(self) -> str:
        """What identifies the bytes: the schedule compares it with its last successful run."""
        return f"{self.target}@{self.revision}" if self.revision else self.target

    def record(self) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "version": self.version, "revision": self.revision}


def _not_found(field_: str, message: str) -> Problem:
    return Problem(404, f"{field_}: {message}", slug="not-found", errors=[{"field": field_, "message": message}])


def hub_cached_file(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, filename)
        return path if isinstance(path, str) else None
    except Exception:
        return None


def hub_revision(repo_id: str, online: bool = False) -> str | None:
    """The hub model's current commit sha: asked of the hub when `online` (and the hub is not
    switched off), else the revision the local cache last saw; None when neither is known."""
    if online and os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes"):
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(repo_id, timeout=10).sha
        except Exception:
            pass
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
        return ref.read_text(encoding="utf-8").strip() or None if ref.is_file() else None
    except Exception:
        return None


def _hub_config(repo_id: str) -> dict | None:
    """config.json from the local HF cache when present (no network); None when unknown."""
    path = hub_cached_file(repo_id, "config.json")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None
    return None


def latest_version(db: Session, tenant: str, name: str) -> Model | None:
    return db.scalar(select(Model).where(Model.tenant_id == tenant, Model.name == name)
                     .order_by(Model.version.desc()).limit(1))


def resolve_model(db: Session, tenant: str, ref: str, *, field_: str = "model",
                  online: bool = False) -> ResolvedModel:
    if MODEL_ID.match(ref):
        m = db.scalar(select(Model).where(Model.id == ref, Model.tenant_id == tenant))
        if m is None:
            raise _not_found(field_, f"no uploaded model with id {ref!r}")
        return ResolvedModel(ref, m.id, m.config, m.name, m.version)
    if len(ref) <= 96 and HUB_ID.match(ref) and ".." not in ref:
        return ResolvedModel(ref, ref, _hub_config(ref), revision=hub_revision(ref, online))
    named = NAMED_REF.match(ref)
    if named and not MODEL_ID.match(named["name"]):
        name, version = named["name"], named["version"]
        if version is None:
            m = latest_version(db, tenant, name)
        else:
            m = db.scalar(select(Model).where(Model.tenant_id == tenant, Model.name == name,
                                              Model.version == int(version)))
        if m is None:
            what = f"version {version} of model {name!r}" if version else f"model named {name!r}"
            raise _not_found(field_, f"there is no {what}")
        return ResolvedModel(ref, m.id, m.config, m.name, m.version)
    raise field_problem(422, field_, "must be an uploaded model id (mdl_...), a model name, name@version, or a "
                        "hub ID like 'org/name' (at most 96 characters); URLs and paths are not accepted")


def resolve_dataset(db: Session, tenant: str, ref: str, *, field_: str = "dataset") -> tuple[list[str] | None, bool]:
    """(label names, has a text_pair column) of an uploaded dataset or a built-in task."""
    if DATASET_ID.match(ref):
        d = db.scalar(select(Dataset).where(Dataset.id == ref, Dataset.tenant_id == tenant))
        if d is None:
            raise _not_found(field_, f"no uploaded dataset with id {ref!r}")
        return [str(x) for x in d.labels or []], bool(d.has_text_pair)
    builtins = core_bridge.builtin_datasets()
    if ref not in builtins:
        raise field_problem(422, field_, f"must be an uploaded dataset id (ds_...) or a built-in task "
                            f"({', '.join(builtins)}), got {ref!r}")
    return core_bridge.builtin_labels(ref), False


def dataset_kind(db: Session, tenant: str, ref: str) -> tuple[str | None, str]:
    """("text" | "labelled" | None, a name for messages) of an already resolved dataset reference."""
    if DATASET_ID.match(ref):
        d = db.scalar(select(Dataset).where(Dataset.id == ref, Dataset.tenant_id == tenant))
        if d is None:
            return None, ref
        return ("text" if d.format == "txt" else "labelled"), f"{d.filename} ({ref})"
    return ("text" if ref in core_bridge.TEXT_BUILTINS else "labelled"), ref


def check_eval_dataset(train: tuple[list[str] | None, bool], evaluation: tuple[list[str] | None, bool],
                       field_: str = "eval_dataset") -> None:
    """The evaluation set must speak the training set's labels (checked at submit, not mid-run)."""
    (train_labels, train_pair), (eval_labels, eval_pair) = train, evaluation
    if train_labels is not None and eval_labels is not None:
        unknown = [label for label in eval_labels if label not in train_labels]
        if unknown:
            raise field_problem(422, field_, f"labels {', '.join(map(repr, unknown))} do not occur in the "
                                f"training dataset (its labels: {', '.join(train_labels)})")
    if train_pair != eval_pair:
        raise field_problem(422, field_, "must have a text_pair column exactly when the training dataset has one")


@dataclass
class PreparedJob:
    body: JobRequest
    model: ResolvedModel
    normalized: dict[str, Any] = field(default_factory=dict)


def prepare(db: Session, tenant: str, body: JobRequest, *, prefix: str = "", online: bool = False) -> PreparedJob:
    """Every check that can be made before running; raises Problem (field names start with
    `prefix`, e.g. "template." for a schedule's template). Writes nothing."""
    model = resolve_model(db, tenant, body.model, field_=f"{prefix}model", online=online)
    train_info = resolve_dataset(db, tenant, body.dataset, field_=f"{prefix}dataset")
    if body.eval_dataset is not None:
        field_ = f"{prefix}eval_dataset"
        check_eval_dataset(train_info, resolve_dataset(db, tenant, body.eval_dataset, field_=field_), field_)
    kind, name = dataset_kind(db, tenant, body.dataset)
    try:
        normalized = core_bridge.validate_job(model.config, body.budget, body.method, body.options, kind, name,
                                              export=body.export)
    except CompressionError as err:
        # the core names its data argument `data`; the API's field is `dataset`
        field_name = "dataset" if err.field == "data" else err.field
        raise field_problem(422, f"{prefix}{field_name}", err.message) from None
    return PreparedJob(body, model, normalized)


def parse_template(template: Any, prefix: str = "template.") -> JobRequest:
    """A stored or submitted template as a JobRequest; 422 naming the field otherwise."""
    from pydantic import ValidationError

    from .problems import _field_from_loc

    try:
        return JobRequest.model_validate(template)
    except ValidationError as exc:
        errors = [{"field": f"{prefix}{_field_from_loc(e['loc'])}" if e["loc"] else prefix.rstrip("."),
                   "message": e["msg"]} for e in exc.errors()]
        raise Problem(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), slug="invalid-request",
                      title="Invalid request", errors=errors) from None


def insert_job(db: Session, tenant: str, prepared: PreparedJob, *, message: str = "job created",
               queue: str | None = None) -> tuple[Job, dict]:
    """Add the queued job row and its first event to the session (the caller commits, then
    enqueues: the row must exist before a worker hears of it)."""
    now = utcnow()
    body = prepared.body
    request = {"model": prepared.model.target, "dataset": body.dataset,
               **({"eval_dataset": body.eval_dataset} if body.eval_dataset else {}), **prepared.normalized,
               "model_source": prepared.model.record()}
    job = Job(id=new_id("job"), tenant_id=tenant, status="queued", model=prepared.model.target,
              dataset=body.dataset, request=request, queue=queue, created_at=now, updated_at=now)
    db.add(job)
    ev = jobstore.add_first_event(db, job, "status", status="queued", message=message)
    db.flush()
    return job, ev


__all__ = ["JobRequest", "PreparedJob", "ResolvedModel", "check_model_name", "insert_job",
           "latest_version", "parse_template", "prepare", "resolve_dataset", "resolve_model"]
