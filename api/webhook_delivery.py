"""Delivering the webhook outbox: the SSRF guard, one signed POST, and the sender loop.

At-least-once: a sender takes a message with a conditional UPDATE that sets a lease
(`locked_until`) and bumps `attempts`; it records the outcome only while that attempt number is
still the message's. A sender that dies mid-delivery leaves the lease to expire and another one
(or itself, restarted) sends the message again, with the same `webhook-id`. The lease and the
due time (`next_attempt_at`) are on the database's clock (db_now), as job leases are: a sender
whose clock runs ahead would otherwise send a message another one is still sending, and one
running behind would leave due messages unsent for its lag.

SSRF: the URL's host is resolved once per attempt, every address it resolves to must be public
(unless settings.webhook_allow_private), and the connection goes to that checked address (no
second DNS lookup an attacker could answer differently). Redirects are never followed; each socket
operation and the whole attempt are bounded by webhook_timeout_seconds (a receiver trickling its
answer is cut off); at most RESPONSE_LIMIT bytes of the answer are read.
"""
from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable
from urllib.parse import urlsplit

from sqlalchemy import and_, or_, select, update

from . import secretbox, webhooks
from .db import db_now, session_scope
from .models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from .settings import Settings

log = logging.getLogger("vtrans.webhooks")
RESPONSE_LIMIT = 64 * 1024
# Cloud metadata services: never a webhook receiver, refused even when private targets are allowed.
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")}


class UnsafeURL(ValueError):
    pass


@dataclass
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str     # the checked IP the connection goes to


def _blocked(ip: ipaddress._BaseAddress, allow_private: bool) -> str | None:
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private or ip.is_reserved or ip.is_unspecified or ip.is_multicast or not ip.is_global:
        return "a private or reserved address"
    return None


def check_url(url: str, allow_private: bool, resolve: Callable = socket.getaddrinfo) -> Target:
    """The target to connect to, or UnsafeURL saying why not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("must be an http:// or https:// URL")
    if not parts.hostname:
        raise UnsafeURL("has no host")
    if parts.username or parts.password:
        raise UnsafeURL("must not carry credentials (user:password@); sign requests with the endpoint secret")
    if parts.fragment:
        raise UnsafeURL("must not have a #fragment")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = resolve(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"host {parts.hostname!r} does not resolve ({exc})") from None
    addresses = sorted({info[4][0] for info in infos})
    if not addresses:
        raise UnsafeURL(f"host {parts.hostname!r} does not resolve")
    for addr in addresses:
        why = _blocked(ipaddress.ip_address(addr.split("%", 1)[0]), allow_private)
        if why:
            raise UnsafeURL(f"resolves to {addr}, {why}; webhooks only go to public addresses "
                            "(an operator may allow private ones with VTRANS_WEBHOOK_ALLOW_PRIVATE=true)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path, addresses[0])


class _Deadline:
    """Bounds a whole attempt, not each socket operation: a socket timeout alone lets a receiver
    that answers a byte at a time hold the sender as long as it likes (every read is quick), and
    with it every other message behind it, past the message's lease (another sender would then
    send it again meanwhile). When the time is up the connection's socket is shut down, which
    ends whatever read, write or TLS handshake is waiting on it."""

    def __init__(self, seconds: float):
        self.expired = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired.is_set():
                raise TimeoutError("the attempt's time ran out while connecting")

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cancel(self) -> None:
        self._timer.cancel()


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float, deadline: _Deadline):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address, self._deadline = target.address, deadline

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self._deadline.watch(self.sock)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float, deadline: _Deadline):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address, self._deadline = target.address, deadline

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self._deadline.watch(sock)  # the raw socket: shutting it down ends a stalled handshake too
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # certificate checked for the host


@dataclass
class Outcome:
    ok: bool
    status_code: int | None
    latency_ms: float
    error: str | None


def post(url: str, body: str, headers: dict[str, str], settings: Settings) -> Outcome:
    start = time.perf_counter()

    def done(ok, code=None, error=None):
        return Outcome(ok, code, round((time.perf_counter() - start) * 1000, 1), error)

    try:
        target = check_url(url, settings.webhook_allow_private)
    except UnsafeURL as exc:
        return done(False, error=f"refused: the URL {exc}")
    conn_class = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    limit = settings.webhook_timeout_seconds
    deadline = _Deadline(limit)  # the whole attempt; the socket timeout below bounds each operation
    conn = conn_class(target, limit, deadline)
    timed_out = (f"timed out: no complete answer within {limit:g} s "
                 "(VTRANS_WEBHOOK_TIMEOUT_SECONDS bounds the whole attempt)")
    try:
        conn.request("POST", target.path, body=body.encode(), headers=headers)
        resp = conn.getresponse()
        resp.read(RESPONSE_LIMIT)  # bounded: a receiver cannot make us read (or wait for) more
        code = resp.status
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return done(False, error=timed_out if deadline.expired.is_set() else f"{type(exc).__name__}: {exc}"[:500])
    finally:
        deadline.cancel()
        conn.close()
    if deadline.expired.is_set():  # cut off mid-answer (a body without a length reads as complete)
        return done(False, code, timed_out)
    if 200 <= code < 300:
        return done(True, code)
    if 300 <= code < 400:
        return done(False, code, "the receiver answered with a redirect; redirects are not followed")
    return done(False, code, f"the receiver answered HTTP {code}")


@dataclass
class Claimed:
    id: str
    attempt: int
    url: str
    secret: str          # as stored: encrypted when VTRANS_SECRET_KEY is set (secretbox)
    body: str
    endpoint_id: str = ""


def claim_due(db_url: str, lease_seconds: float, limit: int = 20) -> list[Claimed]:
    out = []
    with session_scope(db_url) as s:
        now = db_now(s)
        due = and_(WebhookMessage.status == "pending", WebhookMessage.next_attempt_at <= now,
                   or_(WebhookMessage.locked_until.is_(None), WebhookMessage.locked_until < now))
        ids = s.scalars(select(WebhookMessage.id).where(due).order_by(WebhookMessage.next_attempt_at)
                        .limit(limit)).all()
        for msg_id in ids:
            row = s.execute(update(WebhookMessage).where(WebhookMessage.id == msg_id, due)
                            .values(locked_until=now + timedelta(seconds=lease_seconds),
                                    attempts=WebhookMessage.attempts + 1)
                            .returning(WebhookMessage.attempts, WebhookMessage.body, WebhookMessage.endpoint_id)
                            .execution_options(synchronize_session=False)).first()
            if row is None:
                continue  # another sender took it
            ep = s.get(WebhookEndpoint, row.endpoint_id)
            if ep is not None:
                out.append(Claimed(msg_id, row.attempts, ep.url, ep.secret, row.body, ep.id))
    return out


def record(db_url: str, c: Claimed, outcome: Outcome, delays: list[float]) -> None:
    with session_scope(db_url) as s:
        now = db_now(s)   # next_attempt_at: checked on this clock by whichever sender runs then
        if outcome.ok:
            values = {"status": "delivered", "delivered_at": now}
        elif c.attempt > len(delays):
            values = {"status": "failed"}
        else:
            values = {"next_attempt_at": now + timedelta(seconds=delays[c.attempt - 1])}
        s.add(WebhookAttempt(message_id=c.id, attempt=c.attempt, status_code=outcome.status_code,
                             latency_ms=outcome.latency_ms, error=outcome.error, created_at=now))
        s.execute(update(WebhookMessage).where(WebhookMessage.id == c.id, WebhookMessage.attempts == c.attempt)
                  .values(locked_until=None, **values).execution_options(synchronize_session=False))


def deliver_due(settings: Settings) -> int:
    """One pass: send every due message once. Returns how many were attempted."""
    lease = settings.webhook_timeout_seconds * 4 + 5  # longer than one attempt can take (timeouts per step)
    claimed = claim_due(settings.db_url, lease)
    for c in claimed:
        try:
            secret = secretbox.open_(c.secret, c.endpoint_id, settings.secret_key_value)
        except secretbox.SecretKeyError as exc:
            # Never sign with a wrong secret: the attempt is logged as failed with the reason
            # and retried on the usual backoff (the operator can fix the key meanwhile).
            log.error("%s", exc)
            record(settings.db_url, c, Outcome(False, None, 0.0, str(exc)), list(settings.webhook_retry_delays))
            continue
        outcome = post(c.url, c.body, webhooks.headers(secret, c.id, c.body), settings)
        if not outcome.ok:
            log.info("webhook %s attempt %d failed: %s", c.id, c.attempt, outcome.error)
        record(settings.db_url, c, outcome, list(settings.webhook_retry_delays))
    return len(claimed)


def seal_plain_secrets(db_url: str, key: str) -> int:
    """Encrypt the secrets stored in plain text before VTRANS_SECRET_KEY was set; returns how
    many. Each row is updated only if it still holds the value read (safe to run twice at once)."""
    done = 0
    with session_scope(db_url) as s:
        for ep in s.scalars(select(WebhookEndpoint)).all():
            if secretbox.is_sealed(ep.secret):
                continue
            done += s.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == ep.id,
                                                            WebhookEndpoint.secret == ep.secret)
                              .values(secret=secretbox.seal(ep.secret, ep.id, key))
                              .execution_options(synchronize_session=False)).rowcount
    return done


def redeliver(db_url: str, tenant: str, endpoint_id: str, msg_id: str) -> bool:
    """Send a message again (same webhook-id), starting a fresh round of retries."""
    with session_scope(db_url) as s:
        row = s.execute(update(WebhookMessage).where(WebhookMessage.id == msg_id, WebhookMessage.tenant_id == tenant,
                                                     WebhookMessage.endpoint_id == endpoint_id)
                        .values(status="pending", attempts=0, next_attempt_at=db_now(s), locked_until=None)
                        .returning(WebhookMessage.id).execution_options(synchronize_session=False)).first()
    return row is not None
