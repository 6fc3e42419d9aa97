"""The client's typed errors: a problem+json answer becomes an ApiError subclass by status, so a
pipeline can catch `NotFound` or `Conflict` instead of reading status codes. Imported from
api.client (`from api.client import NotFound`), where they are re-exported."""
from __future__ import annotations

from typing import Any

import httpx

from . import schemas


class ApiError(Exception):
    """A problem+json answer: `status`, `type`, `title`, `detail`, `instance`, `errors`."""

    def __init__(self, status: int, body: dict[str, Any], headers: httpx.Headers | None = None):
        self.status, self.body = status, body
        self.type = body.get("type", "about:blank")
        self.title = body.get("title", "")
        self.detail = body.get("detail") or body.get("title") or f"HTTP {status}"
        self.instance = body.get("instance")
        self.errors: list[dict[str, str]] = body.get("errors") or []
        self.retry_after = retry_after(headers) if headers is not None else None
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


def error_class(status: int) -> type[ApiError]:
    return {400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: BadRequest, 422: BadRequest,
            429: RateLimited}.get(status, ServiceUnavailable if status >= 500 else ApiError)


def retry_after(headers: httpx.Headers) -> float | None:
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None


def raise_for(resp: httpx.Response) -> None:
    """Raise the typed error for a failed answer (its body read)."""
    try:
        body = resp.json()
    except ValueError:
        body = {"detail": resp.text[:500] or resp.reason_phrase}
    raise error_class(resp.status_code)(resp.status_code, body if isinstance(body, dict) else {}, resp.headers)
