"""Runs one job attempt: claim, compress with a heartbeat/cancel-aware progress callback,
store the artifacts under an attempt-specific prefix, then make them final in one transaction."""
from __future__ import annotations

import json
import logging
import shutil
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

from api import jobstore
from api.artifacts import ArtifactStore
from api.db import session_scope
from api.models import Dataset, Job, Model
from api.settings import Settings
from sqlalchemy.exc import InterfaceError, OperationalError

from vtrans_core.errors import CompressionCancelled, CompressionError

from . import hub_downloads
from .checkpoints import StoreCheckpoint
from .events import note
from .heartbeat import Heartbeat
from .hub_download import HubDeferred, download_revision
from .model_card import HUB_ID, Source, model_card, model_name_for_upload

log = logging.getLogger("vtrans.worker")
DB_DOWN = (OperationalError, InterfaceError)  # connection refused / dropped: transient, not the job's fault
MEDIA_TYPES = {".json": "application/json", ".md": "text/markdown", ".gz": "application/gzip",
               ".txt": "text/plain", ".safetensors": "application/octet-stream", ".onnx": "application/octet-stream"}


class LeaseLost(CompressionCancelled):
    """Another attempt owns the job now (our lease expired); stop without touching the row."""


class Progress:
    """The progress callback handed to vtrans_core.compress: records an event per report, renews
    the lease at most every cancel_check_seconds, and stops the run when a cancel was requested."""

    def __init__(self, settings: Settings, claim: jobstore.Claim, heartbeat: Heartbeat | None = None):
        self.settings, self.claim, self._last_renew = settings, claim, 0.0
        self.heartbeat = heartbeat

    def __call__(self, stage: str, fraction: float, metrics: dict | None = None) -> None:
        self._lease_kept()
        now = time.monotonic()
        renew = now - self._last_renew >= self.settings.cancel_check_seconds
        try:
            owned, cancel = jobstore.report_progress(self.settings.db_url, self.claim, stage, float(fraction),
                                                     _jsonable(metrics or {}), self.settings.lease_seconds, renew)
        except DB_DOWN as exc:
            # The database is restarting: keep computing and report again next time. If the outage
            # outlasts the lease, the reaper requeues the job and the next report says LeaseLost.
            log.warning("job %s: progress not recorded, database unreachable: %s", self.claim.job_id,
                        str(exc).splitlines()[0][:200])
            return
        if renew:
            self._last_renew = now
        self._verdict(owned, cancel)

    def poll(self) -> None:
        """The same cancel and lease check, recording nothing: for waits with no progress to report
        (a hub download, a wait for the hub to come back), called every cancel_check_seconds."""
        self._lease_kept()
        try:
            owned, cancel = jobstore.cancel_state(self.settings.db_url, self.claim)
        except DB_DOWN:   # as above: ask again at the next poll
            return
        self._verdict(owned, cancel)

    def _lease_kept(self) -> None:
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            raise LeaseLost(f"job {self.claim.job_id}: attempt {self.claim.attempt} no longer owns the job")

    def _verdict(self, owned: bool, cancel: bool) -> None:
        if not owned:
            raise LeaseLost(f"job {self.claim.job_id}: attempt {self.claim.attempt} no longer owns the job")
        if cancel:
            raise CompressionCancelled(f"job {self.claim.job_id} was cancelled")


def _finish(settings: Settings, claim: jobstore.Claim, status: str, **kw: Any) -> bool:
    """jobstore.finish, retried while the database is unreachable (up to one lease), so a job
    that completed during a database restart still records its result."""
    deadline = time.monotonic() + settings.lease_seconds
    while True:
        try:
            return jobstore.finish(settings.db_url, claim, status, **kw)
        except DB_DOWN:
            if time.monotonic() > deadline:
                raise
            log.warning("job %s: database unreachable while recording %s; retrying", claim.job_id, status)
            time.sleep(2)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def hub_revision_of(job: Job) -> str | None:
    """The hub commit sha the job recorded for its hub model (None: not a hub job, or unknown)."""
    if not HUB_ID.match(job.model):
        return None
    return ((job.request or {}).get("model_source") or {}).get("revision") or None


def _inputs(settings: Settings, store: ArtifactStore, job: Job, work: Path,
            note=lambda message: None, check=lambda: None) -> tuple[str, str, str | None]:
    """Local paths (or hub ID / built-in name) for compress()'s model, data and eval_data.
    `check` raises when the job was cancelled (polled while a hub download runs or waits)."""
    eval_ref = (job.request or {}).get("eval_dataset")
    with session_scope(settings.db_url) as s:
        model = s.get(Model, job.model) if job.model.startswith("mdl_") else None
        dataset = s.get(Dataset, job.dataset) if job.dataset.startswith("ds_") else None
        eval_dataset = s.get(Dataset, eval_ref) if eval_ref and eval_ref.startswith("ds_") else None
    model_arg = job.model
    if model is not None:
        local = store.local_path(model.storage_key)
        model_arg = str(local if local is not None else store.get_dir(model.storage_key, work / "input-model"))
    elif (revision := hub_revision_of(job)) is not None:
        # The recorded commit, not the hub's `main` of today: the job record names these bytes.
        note(f"downloading {job.model} at revision {revision} from the Hugging Face hub")
        # Kept while the job waits for the hub: its next run here continues the files (hub_downloads.py).
        dest = hub_downloads.hub_download_dir(settings.work_dir, job.id, job.model, revision)
        model_arg = str(download_revision(job.model, revision, dest, check=check, note=note,
                                          attempts=settings.hub_download_attempts,
                                          retry_seconds=settings.hub_retry_seconds,
                                          poll_seconds=settings.cancel_check_seconds,
                                          defer_after=settings.hub_requeue_after_seconds,
                                          state=job.hub_state))

    def data_path(ds: Dataset | None, ref: str | None, folder: str) -> str | None:
        if ds is None:
            return ref       # a built-in task name (or None)
        local = store.local_path(ds.storage_key)
        if local is not None:
            return str(local)
        (work / folder).mkdir(parents=True, exist_ok=True)
        return str(store.get_file(ds.storage_key, work / folder / ds.storage_key.rsplit("/", 1)[-1]))

    return model_arg, data_path(dataset, job.dataset, "data"), data_path(eval_dataset, eval_ref, "eval-data")


def _plan_json(result: Any, out: Path) -> str:
    if (out / "plan.json").is_file():
        return (out / "plan.json").read_text(encoding="utf-8")
    plan = result.plan
    data = plan.to_dict() if hasattr(plan, "to_dict") else plan
    return json.dumps(_jsonable(data), indent=2)


def _source(db_url: str, job: Job) -> Source:
    """Names for the model card: the model's own name and the uploads' file names, not only our ids."""
    hub = bool(HUB_ID.match(job.model))
    revision = hub_revision_of(job)
    # A hub model keeps its hub ID as name and base_model (not the scratch folder it was
    # downloaded to); the label adds the commit the job compressed.
    label = f"{job.model} (hub revision `{revision}`)" if revision else job.model
    eval_ref = (job.request or {}).get("eval_dataset")
    source = Source(model_name=job.model, model_label=label, hub_id=job.model if hub else None,
                    dataset_name=job.dataset, dataset_label=job.dataset,
                    eval_dataset_name=eval_ref, eval_dataset_label=eval_ref)
    try:
        with session_scope(db_url) as s:
            m = s.get(Model, job.model) if job.model.startswith("mdl_") else None
            if m is not None:
                source.model_name, source.hub_id = model_name_for_upload(m.config or {}, m.filename, m.name)
                version = f"version {m.version} of `{m.name}`, " if m.name else ""
                source.model_label = (f"{source.model_name} ({version}uploaded as {m.filename}, model `{m.id}`, "
                                      f"{m.model_type})")
            for ref, name_attr, label_attr in ((job.dataset, "dataset_name", "dataset_label"),
                                               (eval_ref, "eval_dataset_name", "eval_dataset_label")):
                d = s.get(Dataset, ref) if ref and ref.startswith("ds_") else None
                if d is not None:
                    setattr(source, name_attr, d.filename)
                    setattr(source, label_attr, f"{d.filename} (uploaded dataset `{d.id}`, {d.rows} rows)")
    except Exception:  # a card with ids only is still a correct card
        log.exception("model card labels for job %s", job.id)
    return source


def _package(settings: Settings, store: ArtifactStore, job: Job, result: Any, work: Path, prefix: str) -> list[dict[str, Any]]:
    out = Path(result.output_dir)
    metrics = _jsonable(result.metrics)
    card = model_card(_source(settings.db_url, job), job.request, metrics, job.id)
    (out / "README.md").write_text(card, encoding="utf-8")
    extras = work / "extras"
    extras.mkdir(parents=True, exist_ok=True)
    (extras / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (extras / "plan.json").write_text(_plan_json(result, out), encoding="utf-8")
    shutil.copyfile(out / "README.md", extras / "README.md")
    if (out / "onnx").is_dir():
        # A deployable of its own (artifact onnx/model.onnx), not part of the transformers
        # folder in model.tar.gz: whoever serves with onnxruntime downloads one file.
        shutil.move(str(out / "onnx"), str(extras / "onnx"))
    with tarfile.open(extras / "model.tar.gz", "w:gz") as tar:
        tar.add(out, arcname="model")
    rows = []
    for base, name_prefix in ((out, "model/"), (extras, "")):
        for rel, size, sha256 in store.put_dir_checked(base, f"{prefix}/{name_prefix}".rstrip("/")):
            name = f"{name_prefix}{rel}"
            suffix = Path(rel).suffix
            rows.append({"name": name, "storage_key": f"{prefix}/{name}", "size_bytes": size, "sha256": sha256,
                         "media_type": MEDIA_TYPES.get(suffix, "application/octet-stream")})
    return rows


def _defer(settings: Settings, claim: jobstore.Claim, progress: Progress, wait: HubDeferred) -> str:
    """End the attempt, the job queued again until the hub's wait is over (jobstore.defer), then
    tell the broker to deliver it then. A cancel that came meanwhile ends it as cancelled."""
    from .celery_app import send_job

    def reason(retry_at) -> str:
        return (f"{wait.message}; the job waits in the queue meanwhile, its worker free for other jobs, "
                f"and is tried again at {retry_at:%Y-%m-%d %H:%M:%S} UTC")

    message_id = str(uuid.uuid4())
    try:
        retry_at = jobstore.defer(settings.db_url, claim, wait.seconds, reason, _jsonable(wait.state), message_id)
    except DB_DOWN:   # the lease runs out and the reaper requeues it: the hub is tried again sooner, no harm
        log.warning("job %s: could not record the wait for the hub (database unreachable)", claim.job_id)
        return "lost"
    if retry_at is None:
        try:
            progress.poll()   # why not: a cancel (raises CompressionCancelled) or a lost lease
        except CompressionCancelled as stop:
            if isinstance(stop, LeaseLost):
                return "lost"
            _finish(settings, claim, "cancelled", message="cancelled while waiting for the Hugging Face hub")
            return "cancelled"
        return "lost"
    log.warning("job %s: %s", claim.job_id, reason(retry_at))
    try:
        # eta = the row's retry_at, on the database's clock (jobstore.db_now); a receiving worker
        # whose clock runs ahead of it gets the message early and re-schedules it (_early_delivery).
        send_job(settings, claim.job_id, eta=retry_at, task_id=message_id)
    except Exception:   # the row is the truth: the reaper re-sends a due queued job whose message is lost
        log.exception("job %s: message for the retry at %s not sent; the reaper will send it", claim.job_id, retry_at)
    return "deferred"


def _early_delivery(settings: Settings, job_id: str, delivery_id: str | None) -> str:
    """A delivery the claim refused. The job's own retry message arriving before retry_at is sent
    again for the time left, counted on this worker's clock (the one that fired it early), so a
    clock running ahead of the database's costs a message, not the reaper's re-send interval;
    jobstore.reschedule_early lets one delivery do so. Anything else: nothing to do."""
    from .celery_app import send_job

    new_id = str(uuid.uuid4())
    try:
        left = jobstore.reschedule_early(settings.db_url, job_id, delivery_id, new_id)
    except DB_DOWN:   # the broker redelivers an unacked message; failing that, the reaper re-sends
        log.warning("job %s: early delivery not re-scheduled (database unreachable)", job_id)
        return "skipped"
    if left is None:
        log.info("job %s: not claimable (already taken, finished, cancelled, or waiting for the hub until "
                 "later); duplicate delivery ignored", job_id)
        return "skipped"
    log.warning("job %s: its retry message came %.1f s before retry_at (a clock running ahead of the "
                "database's?); sent again for then", job_id, left)
    try:
        send_job(settings, job_id, countdown=left, task_id=new_id)
    except Exception:   # the row names a message that was not sent: the reaper sends one once it is due
        log.exception("job %s: re-scheduled message not sent; the reaper will send it", job_id)
    return "rescheduled"


def _ended(settings: Settings, job_id: str, checkpoint: StoreCheckpoint | None) -> None:
    """The job ended with this attempt: what was kept for a next one goes."""
    if checkpoint is not None:
        checkpoint.remove()
    hub_downloads.forget(settings.work_dir, job_id)


def run_job(settings: Settings, job_id: str, worker_id: str, store: ArtifactStore | None = None,
            delivery_id: str | None = None) -> str:
    """Returns what happened: skipped (not ours to run), rescheduled (the job's retry message came
    before its retry_at and was sent again for then), succeeded, failed, cancelled, lost, or
    deferred (queued again to wait for the hub, worker released). `delivery_id`: the broker
    message's id."""
    # Import torch & co. before claiming, so the lease clock does not run during a slow import.
    from vtrans_core import compress

    claim = jobstore.claim(settings.db_url, job_id, worker_id, settings.lease_seconds, settings.max_attempts)
    if claim is None:
        return _early_delivery(settings, job_id, delivery_id)
    store = store or ArtifactStore(settings.artifacts)
    try:
        hub_downloads.sweep_ended(settings.db_url, settings.work_dir)
    except Exception:   # a leftover folder, no harm to this job: the next sweep tries again
        log.exception("sweeping the hub downloads of ended jobs")
    prefix = f"jobs/{job_id}/attempt-{claim.attempt}"
    work = settings.work_dir / job_id / f"attempt-{claim.attempt}"
    # Earlier attempts of this job are dead (we could claim only because their lease expired):
    # their scratch folders on this machine are garbage.
    for old in work.parent.glob("attempt-*"):
        shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True)
    heartbeat = Heartbeat(settings, claim).start()  # renews the lease from now until the attempt ends
    progress = Progress(settings, claim, heartbeat)
    checkpoint = StoreCheckpoint(store, settings.db_url, claim, work) if settings.checkpoint_seconds >= 0 else None
    try:
        with session_scope(settings.db_url) as s:
            job = s.get(Job, job_id)
        model_arg, data_arg, eval_arg = _inputs(settings, store, job, work, lambda m: note(settings.db_url, claim, m),
                                                progress.poll)
        req = job.request
        if checkpoint is not None:
            checkpoint.download()   # an earlier attempt's, if any: compress() resumes from it
        result = compress(model=model_arg, data=data_arg, budget=req["budget"], method=req["method"],
                          options=req.get("options"), output_dir=str(work / "out"), progress=progress,
                          eval_data=eval_arg, export=req.get("export"), checkpoint=checkpoint,
                          checkpoint_seconds=max(settings.checkpoint_seconds, 0.0))
        progress("save", 1.0, {})  # last chance to honour a cancel before the result is published
        artifacts = _package(settings, store, job, result, work, prefix)
        heartbeat.stop()
        if not _finish(settings, claim, "succeeded", metrics=_jsonable(result.metrics),
                               artifacts=artifacts, message="compressed model ready"):
            store.delete_prefix(prefix)
            return "lost"
        _ended(settings, job_id, checkpoint)
        return "succeeded"
    except HubDeferred as wait:   # a long wait for the hub: in the queue, not on this worker
        store.delete_prefix(prefix)
        heartbeat.stop()
        outcome = _defer(settings, claim, progress, wait)
        if outcome == "cancelled":
            _ended(settings, job_id, checkpoint)   # (an earlier attempt's, if the job had got further before)
        return outcome
    except LeaseLost:   # the checkpoint stays: the attempt that owns the job now may be using it
        heartbeat.stop()
        store.delete_prefix(prefix)
        log.warning("job %s attempt %d lost its lease; another attempt owns it", job_id, claim.attempt)
        return "lost"
    except CompressionCancelled:
        store.delete_prefix(prefix)
        heartbeat.stop()
        if _finish(settings, claim, "cancelled", message="cancelled while running; partial files removed"):
            _ended(settings, job_id, checkpoint)   # (not when another attempt owns the job now: it may be using it)
        return "cancelled"
    except CompressionError as err:
        store.delete_prefix(prefix)
        heartbeat.stop()
        if _finish(settings, claim, "failed",
                   error={"type": "CompressionError", "field": err.field, "message": err.message}):
            _ended(settings, job_id, checkpoint)
        return "failed"
    except Exception as err:  # a bug or a resource problem: the user sees the type and message
        log.exception("job %s failed", job_id)
        store.delete_prefix(prefix)
        heartbeat.stop()
        if _finish(settings, claim, "failed",
                   error={"type": type(err).__name__, "message": str(err)[:2000] or type(err).__name__}):
            _ended(settings, job_id, checkpoint)
        return "failed"
    finally:
        heartbeat.stop()
        shutil.rmtree(work, ignore_errors=True)  # local scratch only; the results are in the store
        try:
            work.parent.rmdir()  # only if no other attempt of this job is using it
        except OSError:
            pass
