"""The client's calls that stream an answer and resume it after a cut connection: following a
job's events over SSE (resumed with Last-Event-ID; `wait` is built on it) and downloading its
artifacts (resumed with Range from a .part file; size and sha256 checked before the final name).

StreamsMixin is part of api.client.Client, which provides the HTTP client and the one-request
calls these build on (`get`, `artifacts`).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
from httpx_sse import SSEError, connect_sse
from pydantic import TypeAdapter, ValidationError

from . import schemas
from .artifacts import sha256_file
from .client_errors import ChecksumMismatch, NotFound, ServiceUnavailable, WaitTimeout, raise_for

TERMINAL = ("succeeded", "failed", "cancelled")
_STREAM_END = TypeAdapter(schemas.StreamEnd)


def job_id_of(job: str | schemas.Job) -> str:
    return job if isinstance(job, str) else job.id


class StreamsMixin:
    """Needs `http`, `max_retry_wait`, `get(job)` and `artifacts(job)` from the class it is mixed into."""

    http: httpx.Client
    max_retry_wait: float

    # ------------------------------------------------------------ events

    def events(self, job: str | schemas.Job, after: int = 0, *, reconnects: int = 20,
               deadline: float | None = None) -> Iterator[schemas.Event]:
        """The job's events from seq > after until it ends. A dropped connection is resumed with
        Last-Event-ID (each event exactly once); `reconnects` failures in a row give up.
        `deadline` (time.monotonic()) makes the iterator stop quietly when it passes. A job
        deleted while it is followed raises NotFound, as get() would."""
        job_id, last, failures = job_id_of(job), after, 0
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                 timeout=httpx.Timeout(30.0, read=120.0)) as source:
                    if not source.response.is_success:
                        source.response.read()
                        raise_for(source.response)
                    with _closed_at(source.response, deadline):
                        for sse in source.iter_sse():
                            if sse.event == "end":
                                _check_end(job_id, sse.data)
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

    def wait(self, job: str | schemas.Job, timeout: float | None = None, *, progress: bool | None = None) -> schemas.Job:
        """Follow the job's events until it ends; returns the final job (whatever its status).
        Raises WaitTimeout after `timeout` seconds. `progress`: a bar with stage, fraction and
        ETA on stderr (default: only when stderr is a terminal)."""
        job_id = job_id_of(job)
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
        plan.json, README.md — and the deployable exports, onnx/model.onnx) into `directory`. An
        interrupted download resumes from its .part file; every file's size and sha256 are checked
        before it gets its final name."""
        job_id = job_id_of(job)
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
                raise_for(resp)
            mode = "ab" if resp.status_code == 206 else "wb"  # 200: the server ignored Range, start over
            with part.open(mode) as fh:
                for block in resp.iter_bytes():  # as received: a cut keeps what arrived
                    fh.write(block)


def _check_end(job_id: str, data: str) -> None:
    """The `end` event's data is the final Job, or a JobGone when the job was deleted meanwhile
    (schemas.StreamEnd): the latter is raised as the NotFound a get() of the job would raise."""
    try:
        end = _STREAM_END.validate_json(data)
    except ValidationError:
        # Not parsable by this version (e.g. a newer server's status): the stream still ended,
        # and wait() reads the final job with get(), which says what went wrong.
        return
    if isinstance(end, schemas.JobGone):
        raise NotFound(404, {"type": "urn:vtrans:problem:not-found", "title": "Job deleted", "status": 404,
                             "detail": end.detail, "instance": f"/v1/jobs/{job_id}/events"})


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
