"""A small Python client for pipelines: upload, submit, follow, wait, download.

    from api.client import Client
    vt = Client()                                   # VTRANS_URL, VTRANS_API_KEY
    job = vt.submit(model=vt.upload_model("my-bert/").id, dataset="tweet-sentiment",
                    budget="flops:0.5", method="fast", idempotency_key="build-4711")
    job = vt.wait(job, timeout=3600)                # progress bar on a terminal, quiet otherwise
    if job.status == "succeeded":
        vt.download(job, "out/")                    # resumable, sha256-verified

Results are the service's own response models (api/schemas.py). Errors are typed exceptions
carrying the problem+json fields (ApiError and subclasses, api/client_errors.py); 429 and 503
answers are retried after their Retry-After. Following events and downloading, the calls that
stream and resume after a cut connection, are in api/client_streams.py. Everything is imported
from here. The CLI (`vtrans jobs ...`, api/cli_jobs.py) is built on this class.
"""
from __future__ import annotations

import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import httpx

from . import schemas
from .client_errors import (ApiError, BadRequest, ChecksumMismatch, Conflict, NotFound, RateLimited,
                            ServiceUnavailable, Unauthorized, WaitTimeout, raise_for, retry_after)
from .client_streams import TERMINAL, StreamsMixin, job_id_of

# The errors live in client_errors.py and the streaming calls in client_streams.py; this module
# is the one import path for all of it (`from api.client import Client, NotFound`).
__all__ = ["ApiError", "BadRequest", "ChecksumMismatch", "Client", "Conflict", "NotFound", "RateLimited",
           "ServiceUnavailable", "TERMINAL", "Unauthorized", "WaitTimeout", "pack_model_dir", "parse_budget"]

RETRY_STATUSES = (429, 503)


def parse_budget(text: str | dict[str, Any], seq_len: int | None = None) -> dict[str, Any]:
    """"flops:0.5" -> {"kind": "flops", "target": 0.5}; a dict passes through (the service checks it)."""
    if isinstance(text, dict):
        return dict(text)
    kind, sep, target = str(text).partition(":")
    if not sep:
        raise ValueError(f"budget: expected KIND:TARGET like flops:0.5, got {text!r}")
    try:
        budget: dict[str, Any] = {"kind": kind.strip(), "target": float(target)}
    except ValueError:
        raise ValueError(f"budget: TARGET must be a number, got {target!r}") from None
    if seq_len is not None:
        budget["seq_len"] = seq_len
    return budget


def pack_model_dir(directory: Path, dest: Path) -> Path:
    """The way people pack a model: `tar czf dest -C directory .`."""
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(directory, arcname=".")
    return dest


class Client(StreamsMixin):
    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 300.0,
                 retries: int = 5, max_retry_wait: float = 60.0, transport: httpx.BaseTransport | None = None):
        url = url or os.environ.get("VTRANS_URL") or "http://127.0.0.1:8000"
        key = key if key is not None else os.environ.get("VTRANS_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url, self.retries, self.max_retry_wait = url.rstrip("/"), retries, max_retry_wait
        self.http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, connect=10.0))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, *, files_from: Path | None = None, **kw: Any) -> httpx.Response:
        """One call with 429/503 retried after Retry-After (capped); other errors raised typed.
        An upload is re-read from `files_from` on each attempt."""
        # A request that failed in transit is repeated only when repeating cannot do harm: a GET,
        # or a submit carrying an Idempotency-Key.
        safe = method == "GET" or "Idempotency-Key" in (kw.get("headers") or {})
        for attempt in range(self.retries + 1):
            try:
                if files_from is not None:
                    with files_from.open("rb") as fh:
                        resp = self.http.request(method, path, files={"file": (files_from.name, fh)}, **kw)
                else:
                    resp = self.http.request(method, path, **kw)
            except httpx.TransportError:
                if not safe or attempt == self.retries:
                    raise
                time.sleep(min(self.max_retry_wait, 2.0 ** attempt))
                continue
            if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                wait = retry_after(resp.headers)
                time.sleep(min(self.max_retry_wait, wait if wait is not None else 2.0 ** attempt))
                continue
            break
        if not resp.is_success:
            raise_for(resp)
        return resp

    # ------------------------------------------------------------ uploads

    def upload_model(self, path: str | os.PathLike) -> schemas.ModelUploaded:
        """A model folder (packed for you) or a .tar.gz/.zip of one."""
        path = Path(path)
        if path.is_dir():
            with tempfile.TemporaryDirectory(prefix="vtrans-upload-") as tmp:
                archive = pack_model_dir(path, Path(tmp) / f"{path.resolve().name or 'model'}.tar.gz")
                resp = self._request("POST", "/v1/models", files_from=archive)
        else:
            resp = self._request("POST", "/v1/models", files_from=path)
        return schemas.ModelUploaded.model_validate(resp.json())

    def upload_dataset(self, path: str | os.PathLike) -> schemas.Dataset:
        return schemas.Dataset.model_validate(self._request("POST", "/v1/datasets", files_from=Path(path)).json())

    # ------------------------------------------------------------ jobs

    def submit(self, model: str, dataset: str, budget: str | dict[str, Any], method: str = "vtrans",
               options: dict[str, Any] | None = None, *, idempotency_key: str | None = None,
               **fields: Any) -> schemas.Job:
        """POST /v1/jobs. With an idempotency_key, a retried submit returns the same job instead of a
        second one. Extra keyword fields are sent as request fields (for fields added later)."""
        body = {"model": model, "dataset": dataset, "budget": parse_budget(budget), "method": method,
                "options": options, **fields}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return schemas.Job.model_validate(self._request("POST", "/v1/jobs", json=body, headers=headers).json())

    def get(self, job: str | schemas.Job) -> schemas.Job:
        return schemas.Job.model_validate(self._request("GET", f"/v1/jobs/{job_id_of(job)}").json())

    def list(self, status: str | list[str] | None = None, model: str | None = None,
             page_size: int = 50, limit: int | None = None) -> Iterator[schemas.Job]:
        """Jobs newest first, following next_cursor page by page (at most `limit` jobs)."""
        params: dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        if model:
            params["model"] = model
        seen = 0
        while True:
            page = schemas.JobList.model_validate(self._request("GET", "/v1/jobs", params=params).json())
            for job in page.data:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            if not page.next_cursor:
                return
            params["cursor"] = page.next_cursor

    def cancel(self, job: str | schemas.Job) -> schemas.Job:
        return schemas.Job.model_validate(self._request("POST", f"/v1/jobs/{job_id_of(job)}/cancel").json())

    def artifacts(self, job: str | schemas.Job) -> list[schemas.Artifact]:
        resp = self._request("GET", f"/v1/jobs/{job_id_of(job)}/artifacts")
        return schemas.ArtifactList.model_validate(resp.json()).data
