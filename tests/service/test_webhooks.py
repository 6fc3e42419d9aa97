"""Webhooks (issue #14): endpoints, Standard Webhooks signatures checked with the
`standardwebhooks` library, the durable outbox delivered by a real `vtrans scheduler` process
to a real HTTP receiver, retries, redelivery, and the SSRF guard. Real Postgres."""
from __future__ import annotations

import os
import signal
from datetime import datetime

import pytest
from sqlalchemy import func, select

from .automation import (Tenant, free_port, hook_settings, queued_job, receiver, start_scheduler,  # noqa: F401
                         tenants)
from .conftest import assert_problem, wait_for
from .webhook_receiver import Receiver


def add_hook(t: Tenant, url: str, events=("job.cancelled", "job.failed", "job.succeeded")) -> dict:
    r = t.http.post("/v1/webhooks", json={"url": url, "events": list(events)})
    assert r.status_code == 201, r.text
    return r.json()


def deliveries(t: Tenant, hook_id: str) -> list[dict]:
    r = t.http.get(f"/v1/webhooks/{hook_id}/deliveries")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def verify(secret: str, headers: dict, body: bytes) -> dict:
    from standardwebhooks.webhooks import Webhook

    return Webhook(secret).verify(body, headers)  # raises on a bad signature or stale timestamp


def test_endpoint_secret_is_shown_once_and_other_tenants_get_404(tenants, receiver):
    me, other = tenants(), tenants()
    hook = add_hook(me, receiver.url)
    assert hook["secret"].startswith("whsec_") and hook["id"].startswith("wh_")
    got = me.http.get(f"/v1/webhooks/{hook['id']}").json()
    assert "secret" not in got and got["url"] == receiver.url
    assert [h["id"] for h in me.http.get("/v1/webhooks").json()["data"]] == [hook["id"]]
    for call in (other.http.get, other.http.delete):
        assert_problem(call(f"/v1/webhooks/{hook['id']}"), 404)
    assert_problem(other.http.get(f"/v1/webhooks/{hook['id']}/deliveries"), 404)
    # the delivery filter takes the statuses a delivery can have, and names itself otherwise
    assert me.http.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"status": "failed"}).json()["data"] == []
    assert_problem(me.http.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"status": "lost"}), 422, "status")
    assert other.http.get("/v1/webhooks").json()["data"] == []
    assert me.http.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert_problem(me.http.get(f"/v1/webhooks/{hook['id']}"), 404)


def test_bad_events_and_urls_are_refused_naming_the_field(tenants):
    t = tenants()
    assert_problem(t.http.post("/v1/webhooks", json={"url": "https://example.com/h", "events": ["job.exploded"]}),
                   422, "events[0]")
    assert_problem(t.http.post("/v1/webhooks", json={"url": "https://example.com/h", "events": []}), 422, "events")
    for url in ("ftp://example.com/h", "not a url", "https://user:pw@example.com/h"):
        assert_problem(t.http.post("/v1/webhooks", json={"url": url, "events": ["job.failed"]}), 422, "url")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/h", "http://localhost/h", "http://[::1]/h", "http://10.1.2.3/h", "http://192.168.0.7/h",
    "http://172.16.5.4/h", "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/h", "http://100.64.0.1/h",
    "http://[fd00:ec2::254]/h", "http://[::ffff:127.0.0.1]/h", "http://127.1/h"])
def test_ssrf_targets_are_refused(service_settings, tenants, url):
    strict = service_settings.model_copy(update={"webhook_allow_private": False})
    r = tenants(strict).http.post("/v1/webhooks", json={"url": url, "events": ["job.failed"]})
    body = assert_problem(r, 422, "url")
    assert "address" in body["detail"] or "resolve" in body["detail"]


def test_the_endpoint_limit_answers_a_declared_409(tenants):
    """Past MAX_ENDPOINTS a tenant gets 409, a status createWebhook declares (a generated client
    then has a typed Problem for it, not an 'unexpected status')."""
    from api.routes.webhooks import MAX_ENDPOINTS

    t = tenants()
    for i in range(MAX_ENDPOINTS):
        add_hook(t, f"http://127.0.0.1:9/hook-{i}")
    assert_problem(t.http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/one-more", "events": ["job.failed"]}),
                   409)
    declared = t.http.get("/openapi.json").json()["paths"]["/v1/webhooks"]["post"]["responses"]
    assert "409" in declared


def test_metadata_address_is_refused_even_when_private_targets_are_allowed(tenants):
    r = tenants().http.post("/v1/webhooks", json={"url": "http://169.254.169.254/latest", "events": ["job.failed"]})
    assert "metadata" in assert_problem(r, 422, "url")["detail"]


def test_hostname_resolving_to_a_private_address_is_refused_at_send_time_too():
    # DNS can change after the endpoint was accepted (rebinding): every attempt checks again,
    # and connects to the address it checked.
    from api.webhook_delivery import UnsafeURL, check_url

    def rebinding(host, port, proto=0):
        return [(2, 1, 6, "", ("10.0.0.5", port))]
    with pytest.raises(UnsafeURL, match="private"):
        check_url("https://hooks.example.com/x", allow_private=False, resolve=rebinding)
    target = check_url("https://hooks.example.com/x?a=1", allow_private=False,
                       resolve=lambda h, p, proto=0: [(2, 1, 6, "", ("93.184.216.34", p))])
    assert (target.address, target.port, target.path) == ("93.184.216.34", 443, "/x?a=1")


def test_event_is_written_with_the_state_change_and_delivered_signed(tenants, receiver, start_scheduler,
                                                                     hook_settings):
    t = tenants()
    hook = add_hook(t, receiver.url)
    job_id = queued_job(t)
    assert deliveries(t, hook["id"]) == []  # a queued job is not an event anyone subscribed to
    assert t.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    # The outbox row exists as soon as the cancel committed, before any sender ran.
    (pending,) = deliveries(t, hook["id"])
    assert pending["status"] == "pending" and pending["event_type"] == "job.cancelled"
    assert pending["payload"]["data"]["id"] == job_id
    start_scheduler()
    receiver.wait_for(1, 30)
    headers, body = receiver.received[0]
    payload = verify(hook["secret"], headers, body)
    assert payload["type"] == "job.cancelled" and payload["data"]["status"] == "cancelled"
    assert headers["webhook-id"] == pending["id"]
    with pytest.raises(Exception):
        verify(hook["secret"], headers, body.replace(b"cancelled", b"succeeded"))
    (done,) = wait_for(lambda: [d for d in deliveries(t, hook["id"]) if d["status"] == "delivered"], 15,
                       what="delivery recorded")
    (attempt,) = done["attempt_log"]
    assert attempt["status_code"] == 204 and attempt["latency_ms"] >= 0 and attempt["error"] is None


def test_receiver_down_then_up_receives_every_event_once_per_id(tenants, start_scheduler, hook_settings):
    t = tenants()
    port = free_port()  # nothing listens here yet: the receiver is down
    hook = add_hook(t, f"http://127.0.0.1:{port}/hooks")
    jobs = [queued_job(t) for _ in range(5)]
    for job_id in jobs:
        t.http.post(f"/v1/jobs/{job_id}/cancel")
    start_scheduler()
    wait_for(lambda: all(len(d["attempt_log"]) >= 2 for d in deliveries(t, hook["id"])), 60,
             what="two failed attempts per message")
    failed = deliveries(t, hook["id"])[0]["attempt_log"][0]
    assert failed["status_code"] is None and "Connection" in failed["error"]
    up = Receiver(port).start()
    try:
        up.wait_for(5, 60)
        wait_for(lambda: all(d["status"] == "delivered" for d in deliveries(t, hook["id"])), 30,
                 what="all delivered")
        ids = up.ids()
        assert sorted(set(ids)) == sorted(d["id"] for d in deliveries(t, hook["id"]))
        assert len(ids) == len(set(ids)) == 5  # each message once, once it got through
        got_jobs = {verify(hook["secret"], h, b)["data"]["id"] for h, b in up.received}
        assert got_jobs == set(jobs)
    finally:
        up.stop()


def test_sender_killed_mid_delivery_sends_again_with_the_same_id(tenants, receiver, start_scheduler, hook_settings):
    import threading

    t = tenants()
    hook = add_hook(t, receiver.url)
    receiver.hold = threading.Event()
    t.http.post(f"/v1/jobs/{queued_job(t)}/cancel")
    proc = start_scheduler("scheduler-1")
    assert receiver.holding.wait(30), proc.output()
    os.killpg(proc.p.pid, signal.SIGKILL)  # dies after sending, before recording the outcome
    proc.p.wait(10)
    receiver.hold.set()
    receiver.hold = None
    assert deliveries(t, hook["id"])[0]["status"] == "pending"
    start_scheduler("scheduler-2")  # picks the message up once the dead sender's lease expires
    wait_for(lambda: deliveries(t, hook["id"])[0]["status"] == "delivered", 60, what="redelivered")
    ids = receiver.ids()
    assert len(ids) == 2 and ids[0] == ids[1]  # at least once; the webhook-id lets the receiver deduplicate


def test_retries_back_off_then_fail_and_redelivery_on_request(tenants, receiver, start_scheduler, hook_settings):
    t = tenants(hook_settings.model_copy(update={"webhook_retry_delays": [0.3, 0.6]}))
    hook = add_hook(t, receiver.url)
    receiver.status = 500
    t.http.post(f"/v1/jobs/{queued_job(t)}/cancel")
    start_scheduler(settings=hook_settings.model_copy(update={"webhook_retry_delays": [0.3, 0.6]}))
    (failed,) = wait_for(lambda: [d for d in deliveries(t, hook["id"]) if d["status"] == "failed"], 30,
                         what="retries exhausted")
    log = failed["attempt_log"]
    assert [a["attempt"] for a in log] == [1, 2, 3] and all(a["status_code"] == 500 for a in log)
    times = [datetime.fromisoformat(a["created_at"]) for a in log]
    assert (times[2] - times[1]).total_seconds() >= 0.55 and (times[1] - times[0]).total_seconds() >= 0.25
    receiver.status = 200
    r = t.http.post(f"/v1/webhooks/{hook['id']}/deliveries/{failed['id']}/redeliver")
    assert r.status_code == 202 and r.json()["status"] == "pending"
    wait_for(lambda: deliveries(t, hook["id"])[0]["status"] == "delivered", 30, what="redelivered")
    assert set(receiver.ids()) == {failed["id"]} and len(receiver.ids()) == 4


def test_redirects_are_not_followed(tenants, receiver, start_scheduler):
    target = Receiver().start()
    try:
        t = tenants()
        hook = add_hook(t, receiver.url)
        receiver.status, receiver.location = 307, target.url
        t.http.post(f"/v1/jobs/{queued_job(t)}/cancel")
        start_scheduler()
        wait_for(lambda: deliveries(t, hook["id"])[0]["attempt_log"], 30, what="an attempt")
        attempt = deliveries(t, hook["id"])[0]["attempt_log"][0]
        assert attempt["status_code"] == 307 and "redirect" in attempt["error"]
        assert target.received == []
    finally:
        target.stop()


def test_no_outbox_row_when_the_state_change_rolls_back(hook_settings, tenants, receiver):
    """The message is written in the job's transaction: an aborted transaction leaves neither."""
    from api.db import session_scope
    from api.models import Job, WebhookMessage
    from api import jobstore

    t = tenants()
    add_hook(t, receiver.url)
    job_id = queued_job(t)
    with pytest.raises(RuntimeError):
        with session_scope(hook_settings.db_url) as s:
            s.execute(Job.__table__.update().where(Job.id == job_id).values(status="cancelled"))
            from api import webhooks
            assert webhooks.emit_job_status(s, job_id)
            raise RuntimeError("crash before commit")
    with session_scope(hook_settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(WebhookMessage).where(WebhookMessage.tenant_id == t.name)) == 0
    assert jobstore.request_cancel(hook_settings.db_url, job_id, t.name) == "cancelled"
    with session_scope(hook_settings.db_url) as s:
        assert s.scalar(select(func.count()).select_from(WebhookMessage).where(WebhookMessage.tenant_id == t.name)) == 1


@pytest.mark.parametrize("trickled", ["body", "whole answer"])
def test_a_receiver_trickling_its_answer_is_cut_off_at_the_attempt_timeout(trickled):
    """VTRANS_WEBHOOK_TIMEOUT_SECONDS bounds the whole attempt, not each socket read: a receiver
    that answers a byte at a time (every byte well within the read timeout) cannot hold the
    sender, and every other tenant's deliveries queued behind it, for as long as it likes, nor
    outlive the message's lease (which would send it again while this attempt still runs)."""
    import socket
    import threading
    import time

    from api.settings import Settings
    from api.webhook_delivery import post

    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n" + b"x" * 64
    head, rest = (answer.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", answer.split(b"\r\n\r\n", 1)[1]) \
        if trickled == "body" else (b"", answer)
    srv = socket.create_server(("127.0.0.1", 0))
    cut_off = threading.Event()

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(head)
                for i in range(len(rest)):
                    conn.sendall(rest[i:i + 1])
                    time.sleep(0.3)  # < the 1 s read timeout: each read alone never times out
            except OSError:
                cut_off.set()
                return
            if conn.recv(1) == b"":  # the sender closed its side early
                cut_off.set()

    threading.Thread(target=serve, daemon=True).start()
    settings = Settings(webhook_allow_private=True, webhook_timeout_seconds=1.0)
    try:
        start = time.monotonic()
        outcome = post(f"http://127.0.0.1:{srv.getsockname()[1]}/hooks", "{}", {"content-type": "application/json"},
                       settings)
        took = time.monotonic() - start
    finally:
        srv.close()
    # The whole answer takes ~19 s to trickle in; the attempt must end near its 1 s.
    assert took < 8, (took, outcome)
    assert not outcome.ok and "timed out" in outcome.error, outcome
