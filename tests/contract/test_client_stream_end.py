"""How the client ends a followed event stream (no service: an httpx MockTransport serves it).
`end` carries the final Job, or a JobGone when the job was deleted while it was followed; the
latter is the NotFound a get() of the job would raise, from events() and wait() alike."""
from __future__ import annotations

import json

import httpx
import pytest

from api import client as vc
from api import schemas
from api.routes.events import _gone

JOB = {**schemas.Job.model_config["json_schema_extra"]["examples"][0], "artifacts": None}
EVENT = schemas.Event.model_config["json_schema_extra"]["examples"][0]


def _block(event: str, seq: int, data: dict) -> str:
    return f"event: {event}\nid: {seq}\ndata: {json.dumps(data)}\n\n"


def _stream(end: dict) -> bytes:
    return ("retry: 2000\n\n" + _block("progress", 7, EVENT) + _block("progress", 8, {**EVENT, "seq": 8})
            + _block("end", 8, end)).encode()


def _client(end: dict) -> vc.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_stream(end))
        return httpx.Response(200, json=JOB)  # getJob: still running when wait() starts
    return vc.Client("http://vtrans.test", "vt_key", transport=httpx.MockTransport(handler))


def test_a_job_deleted_while_followed_is_not_found():
    seen = []
    with _client(_gone(JOB["id"])) as vt, pytest.raises(vc.NotFound) as err:
        for event in vt.events(JOB["id"]):
            seen.append(event.seq)
    assert seen == [7, 8]  # what came before `end` was delivered
    assert err.value.status == 404 and "was deleted" in err.value.detail and err.value.title == "Job deleted"


def test_wait_on_a_job_deleted_while_followed_is_not_found():
    with _client(_gone(JOB["id"])) as vt, pytest.raises(vc.NotFound, match="was deleted"):
        vt.wait(JOB["id"], timeout=30, progress=False)


def test_an_end_with_the_final_job_just_ends_the_events():
    with _client({**JOB, "status": "succeeded", "progress": 1.0}) as vt:
        assert [e.seq for e in vt.events(JOB["id"])] == [7, 8]
