"""A small Python client for pipelines: upload, submit, follow, wait, download.

    from api.client import Client
    vt = Client()                                   # VTRANS_URL, VTRANS_API_KEY
    job = vt.submit(model=vt.upload_model("my-bert/").id, dataset="tweet-sentiment",
                    budget="flops:0.5", method="fast", idempotency_key="build-4711")
    job = vt.wait(job, timeout=3600)                # progress bar on a terminal, quiet otherwise
    if job.status == "succeeded":
        vt.download(job, "out/")                    # resumable, sha256-verified

Results are the service's own response models (api/schemas.py). Errors are typed exceptions
carrying the problem+json fields (ApiError and subclasses); 429 and 503 answers are retried after
their Retry-After. The CLI (`vtrans jobs ...`, api/cli_jobs.py) is built on this class.
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
from httpx_sse import SSEError, connect_sse

from . import schemas
from .artifacts import sha256_file

TERMINAL = ("succeeded", "failed", "cancelled")
RETRY_STATUSES = (429, 503)


class ApiError(Exception):
    """A problem+json answer: `status`, `type`, `title`, `detail`, `instance`, `errors`."""

    def __init__(self, status: int, body: dict[str, Any], headers: httpx.Headers | None = None):
        self.status, self.body = status, body
        self.type = body.get("type", "about:blank")
        self.title = body.get("title", "")
        self.detail = body.get("detail") or body.get("title") or f"HTTP {status}"
        self.instance = body.get("instance")
        self.errors: list[dict[str, str]] = body.get("errors") or []
        self.retry_after = _retry_after(headers) if headers is not None else None
        super().__init__(f"{status} {self.title}: {self.detail}" if self.title else f"{status}: {self.detail}")


class BadRequest(ApiError):
    """400/413/422: the request itself is wrong; `errors` names each field."""


class Unauthorized(ApiError):
    """401: missing, unknown or revoked API key."""


class NotFound(ApiError):
    """404"""


class Conflict(ApiError):
    """409: e.g. cancelling a finished job, or an Idempotency-Key reused with another body."""


class RateLimited(ApiError):
    """429 after the retries ran out."""


class ServiceUnavailable(ApiError):
    """503 (or 5xx) after the retries ran out."""


class WaitTimeout(Exception):
    """wait() gave up; the job keeps running (`job` is its last known state)."""

    def __init__(self, job: schemas.Job, timeout: float):
        super().__init__(f"job {job.id} still {job.status} after {timeout:.0f}s")
        self.job = job


class ChecksumMismatch(Exception):
    """A downloaded file's size or sha256 differs from what the service lists; nothing was kept."""


def _error_class(status: int) -> type[ApiError]:
    return {400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: BadRequest, 422: BadRequest,
            429: RateLimited}.get(status, ServiceUnavailable if status >= 500 else ApiError)


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None


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


class Client:
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
                wait = _retry_after(resp.headers)
                time.sleep(min(self.max_retry_wait, wait if wait is not None else 2.0 ** attempt))
                continue
            break
        if resp.is_success:
            return resp
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text[:500] or resp.reason_phrase}
        raise _error_class(resp.status_code)(resp.status_code, body if isinstance(body, dict) else {}, resp.headers)

    @staticmethod
    def _job_id(job: str | schemas.Job) -> str:
        return job if isinstance(job, str) else job.id

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
        return schemas.Job.model_validate(self._request("GET", f"/v1/jobs/{self._job_id(job)}").json())

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
        return schemas.Job.model_validate(self._request("POST", f"/v1/jobs/{self._job_id(job)}/cancel").json())

    def artifacts(self, job: str | schemas.Job) -> list[schemas.Artifact]:
        resp = self._request("GET", f"/v1/jobs/{self._job_id(job)}/artifacts")
        return schemas.ArtifactList.model_validate(resp.json()).data

    # ------------------------------------------------------------ events

    def events(self, job: str | schemas.Job, after: int = 0, *, reconnects: int = 20,
               deadline: float | None = None) -> Iterator[schemas.Event]:
        """The job's events from seq > after until it ends. A dropped connection is resumed with
        Last-Event-ID (each event exactly once); `reconnects` failures in a row give up.
        `deadline` (time.monotonic()) makes the iterator stop quietly when it passes."""
        job_id, last, failures = self._job_id(job), after, 0
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                 timeout=httpx.Timeout(30.0, read=120.0)) as source:
                    if not source.response.is_success:
                        source.response.read()
                        self._raise_for(source.response)
                    with _closed_at(source.response, deadline):
                        for sse in source.iter_sse():
                            if sse.event == "end":
                                return
                            if sse.event in ("progress", "status"):
                                event = schemas.Event.model_validate(json.loads(sse.data))
                                last, failures = event.seq, 0
                                yield event
                # The stream closed without `end` (server restart, proxy timeout): resume.
            except (httpx.TransportError, SSEError, httpx.StreamError) as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                failures += 1
                if failures > reconnects:
                    raise ServiceUnavailable(503, {"title": "Event stream lost",
                                                   "detail": f"gave up after {reconnects} reconnects: {exc}"}) from exc
            except ServiceUnavailable as exc:  # 503 on (re)connect: the service is restarting
                failures += 1
                if failures > reconnects:
                    raise
                time.sleep(min(self.max_retry_wait, exc.retry_after or 2.0))
                continue
            time.sleep(min(5.0, 0.5 * (failures + 1)))

    def _raise_for(self, resp: httpx.Response) -> None:
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text[:500]}
        raise _error_class(resp.status_code)(resp.status_code, body if isinstance(body, dict) else {}, resp.headers)

    def wait(self, job: str | schemas.Job, timeout: float | None = None, *, progress: bool | None = None) -> schemas.Job:
        """Follow the job's events until it ends; returns the final job (whatever its status).
        Raises WaitTimeout after `timeout` seconds. `progress`: a bar with stage, fraction and
        ETA on stderr (default: only when stderr is a terminal)."""
        job_id = self._job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        show = sys.stderr.isatty() if progress is None else progress
        bar = _ProgressBar(job_id) if show else None
        try:
            current = self.get(job_id)
            if current.status not in TERMINAL:
                for event in self.events(job_id, deadline=deadline):
                    if bar is not None:
                        bar.update(event)
                current = self.get(job_id)
            if current.status not in TERMINAL:
                raise WaitTimeout(current, timeout or 0.0)
            return current
        finally:
            if bar is not None:
                bar.close()

    # ------------------------------------------------------------ downloads

    def download(self, job: str | schemas.Job, directory: str | os.PathLike, names: list[str] | None = None,
                 *, attempts: int = 5) -> list[Path]:
        """Download the job's artifacts (default: the top-level ones — model.tar.gz, metrics.json,
        plan.json, README.md — and the deployable exports, onnx/model.onnx) into `directory`. An interrupted download resumes from its .part
        file; every file's size and sha256 are checked before it gets its final name."""
        job_id = self._job_id(job)
        listed = {a.name: a for a in self.artifacts(job_id)}
        wanted = names if names is not None else [n for n in listed if "/" not in n or n.startswith("onnx/")]
        missing = [n for n in wanted if n not in listed]
        if missing:
            raise NotFound(404, {"title": "Not Found", "detail": f"job {job_id} has no artifact {missing[0]!r}"})
        out = []
        for name in wanted:
            out.append(self._download_one(job_id, listed[name], Path(directory), attempts))
        return out

    def _download_one(self, job_id: str, artifact: schemas.Artifact, directory: Path, attempts: int) -> Path:
        dest = (directory / artifact.name).resolve()
        if directory.resolve() not in dest.parents:  # names come from the service; still never escape
            raise ValueError(f"refusing artifact name {artifact.name!r}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and _matches(dest, artifact):
            return dest
        part = dest.with_name(dest.name + ".part")
        for attempt in range(attempts):
            have = part.stat().st_size if part.exists() else 0
            if have > artifact.size:
                part.unlink()
                have = 0
            headers = {"Range": f"bytes={have}-"} if 0 < have < artifact.size else {}
            try:
                if have < artifact.size or artifact.size == 0:
                    self._fetch(f"/v1/jobs/{job_id}/artifacts/{artifact.name}", part, headers)
                break
            except httpx.TransportError:
                if attempt == attempts - 1:
                    raise
                time.sleep(min(5.0, 0.5 * (attempt + 1)))
        if not _matches(part, artifact):
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{artifact.name}: the downloaded file does not match its listed size/sha256")
        part.replace(dest)
        return dest

    def _fetch(self, path: str, part: Path, headers: dict[str, str]) -> None:
        with self.http.stream("GET", path, headers=headers, timeout=httpx.Timeout(60.0)) as resp:
            if resp.status_code not in (200, 206):
                resp.read()
                self._raise_for(resp)
            mode = "ab" if resp.status_code == 206 else "wb"  # 200: the server ignored Range, start over
            with part.open(mode) as fh:
                for block in resp.iter_bytes():  # as received: a cut keeps what arrived
                    fh.write(block)


def _matches(path: Path, artifact: schemas.Artifact) -> bool:
    if path.stat().st_size != artifact.size:
        return False
    return artifact.sha256 is None or sha256_file(path) == artifact.sha256


class _closed_at:
    """Closes the response when the deadline passes, which ends a blocked read (keep-alive pings
    would otherwise keep a quiet stream open past any timeout)."""

    def __init__(self, response: httpx.Response, deadline: float | None):
        self.timer = None
        if deadline is not None:
            self.timer = threading.Timer(max(0.0, deadline - time.monotonic()), response.close)
            self.timer.daemon = True

    def __enter__(self):
        if self.timer is not None:
            self.timer.start()

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()


class _ProgressBar:
    """stage, fraction and ETA on stderr (tqdm, which transformers already depends on)."""

    def __init__(self, job_id: str):
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=job_id, unit="%", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")

    def update(self, event: schemas.Event) -> None:
        if event.fraction is not None:
            self.bar.n = round(100 * event.fraction, 1)
        metrics = event.metrics or {}
        eta = metrics.get("eta_seconds")
        postfix = event.stage or event.status or ""
        if isinstance(eta, (int, float)):
            postfix += f" eta {eta:.0f}s"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
