"""GET /v1/jobs/{id}/events against a real `vtrans api` process: order, ids, resume with
Last-Event-ID, late subscribers, end of stream, the JSON form, keep-alives, and delivery both
through Redis pub/sub (Postgres) and through DB polling (embedded SQLite, no Redis).

Events are recorded through the service's own functions (api.jobstore, via FakeRun), exactly
as the worker records them; the browser test runs a real compression.
"""
from __future__ import annotations

import threading

from .conftest import SSE, FakeRun


def _ids(events):
    return [int(e["id"]) for e in events]


def _assert_matches_rows(events, rows):
    """Each streamed event is the recorded row, in seq order, with the right SSE type."""
    assert _ids(events) == [r["seq"] for r in rows]
    for ev, row in zip(events, rows):
        assert ev["event"] == row["kind"]
        assert ev["data"]["seq"] == row["seq"] and ev["data"]["kind"] == row["kind"]
        if row["kind"] == "progress":
            assert ev["data"]["fraction"] == row["fraction"] and ev["data"]["stage"] == row["stage"]
            assert ev["data"]["metrics"] == row["metrics"] and ev["data"]["step"] == row["metrics"]["step"]
        else:
            assert ev["data"]["status"] == row["status"]


def test_live_stream_order_types_and_end(live_api):
    run = FakeRun(live_api.settings)
    with SSE(live_api, run.job_id) as sse:
        assert sse.response.status_code == 200
        assert sse.response.headers["content-type"].startswith("text/event-stream")
        assert sse.response.headers["cache-control"] == "no-cache"
        first = next(sse)  # the "queued" status written at creation
        assert first["event"] == "status" and first["data"]["status"] == "queued" and first["id"] == "1"
        # Everything below is emitted while the client is connected: pushed through Redis.
        run.start()
        for i in range(5):
            run.progress(loss=2.0 - 0.1 * i, kept_flops=1 - 0.05 * i, kept_params=1 - 0.04 * i)
        run.finish("succeeded", metrics={"method": "fast", "pruned": {"accuracy": 0.5}})
        rest = list(sse)
    events = [first] + rest
    assert events[-1]["event"] == "end"
    body = events[:-1]
    _assert_matches_rows(body, run.rows())
    assert [e["event"] for e in body] == ["status", "status"] + ["progress"] * 5 + ["status"]
    assert [e["data"]["status"] for e in body if e["event"] == "status"] == ["queued", "running", "succeeded"]
    fractions = [e["data"]["fraction"] for e in body if e["event"] == "progress"]
    assert fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    # `end` carries the final job (what GET /v1/jobs/{id} returns) and the last id; then the stream closed.
    end = events[-1]
    assert end["data"]["id"] == run.job_id and end["data"]["status"] == "succeeded"
    assert end["data"]["metrics"]["pruned"]["accuracy"] == 0.5 and end["id"] == body[-1]["id"]
    assert sse.retry and sse.retry > 0


def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(live_api):
    run = FakeRun(live_api.settings).start()
    for _ in range(3):
        run.progress()
    with SSE(live_api, run.job_id) as sse:
        seen = sse.take(4)  # queued, running, progress x2 ...
    assert _ids(seen) == [1, 2, 3, 4]
    # ... the client drops; the job moves on while nobody listens.
    for _ in range(4):
        run.progress()
    with SSE(live_api, run.job_id, last_event_id=seen[-1]["id"]) as sse:
        resumed = sse.take(5)  # everything from seq 5 that exists now; then live again
        run.progress()
        run.finish()
        resumed += list(sse)
    assert resumed[-1]["event"] == "end"
    all_ids = _ids(seen) + _ids(resumed[:-1])
    rows = run.rows()
    assert all_ids == [r["seq"] for r in rows]  # no duplicate, no gap, in order
    _assert_matches_rows(seen + resumed[:-1], rows)


def test_late_subscriber_gets_full_history_then_end(live_api):
    run = FakeRun(live_api.settings).start()
    for _ in range(6):
        run.progress(loss=1.0)
    run.finish("failed")
    with SSE(live_api, run.job_id) as sse:
        events = list(sse)
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "failed"
    assert events[-1]["data"]["error"]["message"] == "boom"
    _assert_matches_rows(events[:-1], run.rows())
    # A reconnect after the end (Last-Event-ID = last id) misses nothing: only `end` again.
    with SSE(live_api, run.job_id, last_event_id=events[-1]["id"]) as sse:
        again = list(sse)
    assert [e["event"] for e in again] == ["end"]
    # Resuming from the middle of a finished job replays only the tail.
    with SSE(live_api, run.job_id, last_event_id="5") as sse:
        tail = list(sse)
    assert _ids(tail[:-1]) == [r["seq"] for r in run.rows() if r["seq"] > 5]


def test_lost_and_duplicated_pushes_are_repaired_from_the_database(live_api):
    """A gap in the pushed seqs sends the API back to the database; a duplicate is dropped."""
    from api import event_bus, jobstore
    from api.db import session_scope

    run = FakeRun(live_api.settings).start()
    with SSE(live_api, run.job_id) as sse:
        assert sse.response.status_code == 200, (sse.response.read(), live_api.proc.output()[-3000:])
        assert _ids(sse.take(2)) == [1, 2]
        # seq 3 is committed but its push is "lost"; seq 4 is pushed twice.
        with session_scope(live_api.settings.db_url) as s:
            jobstore.add_event(s, run.job_id, "default", "progress", stage="masks", fraction=0.1,
                               metrics={"step": 1}, attempt=1)
        with session_scope(live_api.settings.db_url) as s:
            ev4 = jobstore.add_event(s, run.job_id, "default", "progress", stage="masks", fraction=0.2,
                                     metrics={"step": 2}, attempt=1)
        event_bus.publish(run.job_id, ev4)
        event_bus.publish(run.job_id, ev4)
        got = sse.take(2)
        run.finish()
        got += list(sse)
    assert _ids(got[:-1]) == [3, 4, 5] and got[-1]["event"] == "end"


def test_json_history_matches_the_stream(live_api):
    run = FakeRun(live_api.settings).start()
    for _ in range(3):
        run.progress(loss=0.7)
    http = live_api.client()
    as_query = http.get(f"/v1/jobs/{run.job_id}/events", params={"format": "json"})
    as_accept = http.get(f"/v1/jobs/{run.job_id}/events", headers={"Accept": "application/json"})
    assert as_query.status_code == 200 and as_query.headers["content-type"] == "application/json"
    assert as_query.json() == as_accept.json()
    listed = as_query.json()
    assert [e["seq"] for e in listed] == [r["seq"] for r in run.rows()]
    assert all(e["job_id"] == run.job_id for e in listed)
    run.finish()
    with SSE(live_api, run.job_id) as sse:
        streamed = [e["data"] for e in sse][:-1]
    assert http.get(f"/v1/jobs/{run.job_id}/events?format=json").json() == streamed
    after = http.get(f"/v1/jobs/{run.job_id}/events", params={"format": "json", "after": 3}).json()
    assert [e["seq"] for e in after] == [r["seq"] for r in run.rows() if r["seq"] > 3]


def test_errors_are_problem_json(live_api):
    http = live_api.client()
    run = FakeRun(live_api.settings)
    anonymous = live_api.client(authorized=False).get(f"/v1/jobs/{run.job_id}/events")
    assert anonymous.status_code == 401 and anonymous.headers["content-type"].startswith("application/problem+json")
    # Another tenant's key cannot see this job's events (same answer as for a missing job).
    from api.auth import create_key

    other = create_key(live_api.settings.db_url, f"other-{run.job_id[-6:]}").key
    foreign = live_api.client(authorized=False).get(f"/v1/jobs/{run.job_id}/events",
                                                     headers={"Authorization": f"Bearer {other}"})
    assert foreign.status_code == 404
    r = http.get("/v1/jobs/job_doesnotexist/events")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    r = http.get(f"/v1/jobs/{run.job_id}/events", headers={"Last-Event-ID": "abc"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Last-Event-ID"
    r = http.get(f"/v1/jobs/{run.job_id}/events", params={"format": "xml"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "format"


def test_keep_alive_pings_while_idle(live_api):
    """The server under test pings every 1 s (VTRANS_EVENT_PING_SECONDS); production: 15 s."""
    run = FakeRun(live_api.settings).start()
    with SSE(live_api, run.job_id) as sse:
        assert _ids(sse.take(2)) == [1, 2]
        done = threading.Event()
        # Finish only after the client has seen pings, from another thread (the read blocks).
        def finish_later():
            while sse.pings < 2 and not done.wait(0.1):
                pass
            run.finish()
        t = threading.Thread(target=finish_later, daemon=True)
        t.start()
        rest = list(sse)
        done.set()
        t.join(5)
    assert sse.pings >= 2 and rest[-1]["event"] == "end"


def test_embedded_default_delivers_by_polling_the_database(embedded_api):
    """SQLite, no Redis, writer in another process than the API: nothing is pushed at all."""
    run = FakeRun(embedded_api.settings)
    with SSE(embedded_api, run.job_id) as sse:
        assert next(sse)["data"]["status"] == "queued"
        run.start()
        run.progress(loss=1.5)
        got = sse.take(2)
        assert [e["event"] for e in got] == ["status", "progress"]
        run.finish()
        got += list(sse)
    _assert_matches_rows([e for e in got if e["event"] != "end"], run.rows()[1:])
    assert got[-1]["event"] == "end" and got[-1]["data"]["status"] == "succeeded"
    r = embedded_api.client().get(f"/v1/jobs/{run.job_id}/events?format=json")
    assert [e["seq"] for e in r.json()] == [1, 2, 3, 4]


def test_disconnect_releases_the_redis_subscription(live_api, redis_url):
    """A client that goes away must not leave a pub/sub subscription behind in the API."""
    import redis

    from api.event_bus import channel

    from .conftest import wait_for

    r = redis.Redis.from_url(redis_url)
    run = FakeRun(live_api.settings).start()
    subscribers = lambda: dict(r.pubsub_numsub(channel(run.job_id)))[channel(run.job_id).encode()]
    with SSE(live_api, run.job_id) as sse:
        assert _ids(sse.take(2)) == [1, 2]
        assert subscribers() == 1
    wait_for(lambda: subscribers() == 0, 30, 0.2, what="the subscription to be released")
    r.close()


def test_unreachable_redis_degrades_to_polling(start_proc, service_settings, monkeypatch):
    """Redis down: publish() neither raises nor stalls the worker, and the API falls back to
    polling the database, so clients still get every event."""
    from api import event_bus

    from .conftest import start_api

    # publish() backs off after a failure; monkeypatch restores the flag for later tests.
    monkeypatch.setattr(event_bus, "_skip_until", 0.0)
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once
    monkeypatch.setenv("VTRANS_EVENT_BUS_URL", dead)
    server = start_api(start_proc, service_settings, "api-dead-redis", {"VTRANS_EVENT_BUS_URL": dead})
    run = FakeRun(server.settings).start()  # publishes to the dead Redis through jobstore
    with SSE(server, run.job_id) as sse:
        assert _ids(sse.take(2)) == [1, 2]
        run.progress(loss=0.9)
        run.finish()
        rest = list(sse)
    _assert_matches_rows(rest[:-1], run.rows()[2:])
    assert rest[-1]["event"] == "end"
    assert event_bus._skip_until > 0  # it did try Redis, failed, and backed off
