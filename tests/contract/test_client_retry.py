"""Client retry rules without a service (the 429 path runs against the real one in
test_client.py): 503 answers are retried after their Retry-After, and once the retries run
out the caller gets a typed ServiceUnavailable carrying the problem+json fields."""
from __future__ import annotations

import json

import httpx
import pytest

from api import client as vc

JOB = {"id": "job_8f2c1d0e9a7b6c5d4e3f", "status": "queued", "progress": 0.0, "created_at": "2026-01-15T09:30:00Z",
       "updated_at": "2026-01-15T09:30:00Z", "attempts": 0, "cancel_requested": False,
       "request": {"model": "org/tiny", "dataset": "tweet-sentiment", "method": "fast",
                   "budget": {"kind": "flops", "target": 0.5}, "options": {}}}
UNAVAILABLE = {"type": "urn:vtrans:problem:service-unavailable", "title": "Service unavailable", "status": 503,
               "detail": "the database is unreachable", "instance": "/v1/jobs/job_8f2c1d0e9a7b6c5d4e3f"}


def _client(answers: list[int], sleeps: list[float], monkeypatch, retries: int = 5) -> vc.Client:
    monkeypatch.setattr(vc.time, "sleep", sleeps.append)

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0) if answers else 200
        if status == 503:
            return httpx.Response(503, headers={"Retry-After": "7", "content-type": "application/problem+json"},
                                  content=json.dumps(UNAVAILABLE))
        return httpx.Response(200, json=JOB)
    return vc.Client("http://vtrans.test", "vt_key", retries=retries, max_retry_wait=60,
                     transport=httpx.MockTransport(handler))


def test_503_is_retried_after_retry_after(monkeypatch):
    sleeps: list[float] = []
    with _client([503, 503], sleeps, monkeypatch) as vt:
        assert vt.get(JOB["id"]).status == "queued"
    assert sleeps == [7.0, 7.0]


def test_503_after_the_retries_is_a_typed_error(monkeypatch):
    sleeps: list[float] = []
    with _client([503] * 3, sleeps, monkeypatch, retries=2) as vt, pytest.raises(vc.ServiceUnavailable) as exc:
        vt.get(JOB["id"])
    assert sleeps == [7.0, 7.0] and exc.value.status == 503 and exc.value.retry_after == 7.0
    assert exc.value.detail == "the database is unreachable" and exc.value.type.endswith("service-unavailable")
