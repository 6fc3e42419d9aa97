"""The Celery task and the reaper loop that runs beside it in every worker."""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from celery.signals import worker_ready, worker_shutdown

from api import jobstore
from api.artifacts import ArtifactStore
from api.settings import get_settings

from .celery_app import TASK_NAME, app, send_job
from .runner import run_job

log = logging.getLogger("vtrans.worker")
_WORKER_TAG = uuid.uuid4().hex[:8]
_stop = threading.Event()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_WORKER_TAG}"


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def run_compression(job_id: str) -> str:
    return run_job(get_settings(), job_id, worker_id())


def reap_once() -> list[str]:
    settings = get_settings()
    store = ArtifactStore(settings.artifacts)

    def forget_attempt(job_id: str, attempt: int) -> None:
        # A worker that died while uploading leaves files no row points at: remove them.
        store.delete_prefix(f"jobs/{job_id}/attempt-{attempt}")

    requeued = jobstore.reap(settings.db_url, settings.max_attempts, on_reaped=forget_attempt)
    for job_id in requeued:  # the rows are committed as queued: now tell a worker
        send_job(settings, job_id)
        log.warning("requeued job %s after its worker stopped renewing the lease", job_id)
    return requeued


def _reaper_loop() -> None:
    interval = get_settings().reaper_interval
    while not _stop.is_set():
        try:
            reap_once()
        except Exception:
            log.exception("reaper pass failed; retrying in %.0fs", interval)
        _stop.wait(interval)


@worker_ready.connect
def _start_reaper(**_kwargs) -> None:
    # Runs in the worker's main process (no beat needed): once at start-up, then periodically.
    threading.Thread(target=_reaper_loop, name="vtrans-reaper", daemon=True).start()


@worker_shutdown.connect
def _stop_reaper(**_kwargs) -> None:
    _stop.set()
