"""Real event streams checked against what /openapi.json declares for their blocks (x-itemSchema
of text/event-stream; tests/contract/sse_contract.py), served by a real `vtrans api` process:
a whole run, and a job whose row is deleted while its stream is open, which ends with a
JobGone (it once ended with {"status": "deleted"}, a status the schema does not have). The
Python client turns the latter into NotFound. Embedded (SQLite, DB polling): the deletion
publishes nothing, so the stream has to notice it in the database, as it would in production.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import delete

from contract.sse_contract import check_item

from .conftest import SSE, FakeRun


def _items(sse: SSE, events: list[dict]) -> list[dict]:
    """The blocks as the document describes them: the data as the raw JSON text."""
    return [{"retry": sse.retry}] + [{"event": e["event"], "id": e["id"], "data": json.dumps(e["data"])}
                                     for e in events]


def _delete_job(settings, job_id: str) -> None:
    from api.db import session_scope
    from api.models import Job, JobEvent

    with session_scope(settings.db_url) as s:  # what an operator's DELETE would do
        s.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
        s.execute(delete(Job).where(Job.id == job_id))


@pytest.fixture
def document(embedded_api) -> dict:
    return embedded_api.client().get("/openapi.json").json()


def test_a_whole_run_streams_only_declared_blocks(embedded_api, document):
    run = FakeRun(embedded_api.settings).start()
    run.progress(loss=1.5)
    run.finish("succeeded")
    with SSE(embedded_api, run.job_id) as sse:  # a late subscriber: the history, then `end`
        events = list(sse)
    assert [e["event"] for e in events] == ["status", "status", "progress", "status", "end"]
    titles = [check_item(document, item)["title"] for item in _items(sse, events)]
    assert titles == ["RetryItem"] + ["JobEventItem"] * 4 + ["EndItem"]
    assert events[-1]["data"]["status"] == "succeeded"


def test_a_job_deleted_mid_stream_ends_with_a_declared_job_gone(embedded_api, document):
    run = FakeRun(embedded_api.settings)
    with SSE(embedded_api, run.job_id) as sse:
        first = next(sse)
        assert first["data"]["status"] == "queued"
        _delete_job(embedded_api.settings, run.job_id)
        rest = list(sse)
    assert [e["event"] for e in rest] == ["end"]
    end = rest[0]
    assert end["data"] == {"id": run.job_id, "reason": "deleted", "detail": end["data"]["detail"]}
    assert end["id"] == first["id"]  # the last seq sent
    for item in _items(sse, [first, end]):
        check_item(document, item)


def test_the_client_says_not_found_when_the_followed_job_is_deleted(embedded_api):
    from api import client as vc

    run = FakeRun(embedded_api.settings)
    with vc.Client(embedded_api.url, embedded_api.settings.api_key) as vt:
        events = vt.events(run.job_id)
        assert next(events).status == "queued"
        _delete_job(embedded_api.settings, run.job_id)
        with pytest.raises(vc.NotFound, match="was deleted"):
            next(events)
