"""Reused API-key lookups (api/key_cache.py, issue #16): a valid key is not looked up again while
the API process hears revocations, and a key revoked by anyone (here: plain SQL from another
connection, as the CLI or an operator would) is refused at once; with the listener down every
request looks its key up again."""
from __future__ import annotations

import secrets
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from .conftest import Recorder, assert_problem


def _wait(predicate, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def key_app(service_settings, monkeypatch):
    from api import key_cache
    from api.app import create_app
    from api.auth import create_key

    monkeypatch.setattr(key_cache, "RETRY_SECONDS", 0.2)
    created = create_key(service_settings.db_url, f"keycache-{secrets.token_hex(3)}")
    app = create_app(service_settings, enqueue=Recorder())
    with TestClient(app, headers={"Authorization": f"Bearer {created.key}"}) as client:
        assert _wait(lambda: key_cache.recent_lookups.is_listening(service_settings.db_url))
        yield client, created


def _key_lookups(engine, client, path="/v1/jobs?limit=1") -> int:
    seen = []

    def record(_conn, _cursor, statement, *_args):
        if "api_keys" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get(path).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return len(seen)


def _revoke_by_sql(db_url: str, key_id: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:   # not this process's revoke_key: no local clear
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))


def test_a_reused_lookup_ends_the_moment_another_process_revokes_the_key(service_settings, key_app):
    from api.db import get_engine

    client, created = key_app
    engine = get_engine(service_settings.db_url)
    assert _key_lookups(engine, client) == 1      # first request: looked up
    assert _key_lookups(engine, client) == 0      # then reused: no SELECT on api_keys
    _revoke_by_sql(service_settings.db_url, created.id)
    # The trigger's notification arrives at commit; a process on another machine would see it
    # within a network round trip. Refused within 1 s here, and every request after.
    assert _wait(lambda: client.get("/v1/jobs?limit=1").status_code == 401, seconds=1.0)
    assert_problem(client.get("/v1/jobs?limit=1"), 401)


def test_without_the_listener_every_request_looks_its_key_up(service_settings, key_app):
    from api import key_cache
    from api.db import get_engine

    client, created = key_app
    engine = get_engine(service_settings.db_url)
    assert _key_lookups(engine, client) == 1
    with engine.connect() as conn:   # the database drops the listening connection (a restart, a proxy)
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :n"),
                     {"n": key_cache.APPLICATION_NAME})
        conn.commit()
    assert _wait(lambda: not key_cache.recent_lookups.is_listening(service_settings.db_url), seconds=5.0)
    # While nobody listens, nothing is reused (a revocation now would be refused at once)...
    if not key_cache.recent_lookups.is_listening(service_settings.db_url):
        assert _key_lookups(engine, client) == 1
    # ...and the listener comes back by itself, emptying what it may have missed.
    assert _wait(lambda: key_cache.recent_lookups.is_listening(service_settings.db_url), seconds=5.0)
    _revoke_by_sql(service_settings.db_url, created.id)
    assert _wait(lambda: client.get("/v1/jobs?limit=1").status_code == 401, seconds=1.0)


def test_a_lookup_that_raced_a_revocation_is_not_kept():
    from api.key_cache import RecentLookups

    lookups = RecentLookups()
    lookups.set_listening("db", True)
    before = lookups.generation
    lookups.clear()                                 # a revocation heard while the SELECT ran
    lookups.put("db", "h", "acme", 10, before)
    assert lookups.get("db", "h") is None
    lookups.put("db", "h", "acme", 10, lookups.generation)
    assert lookups.get("db", "h") == "acme"
    lookups.set_listening("db", True)               # a second listener (a second app in the process)
    lookups.put("db", "h", "acme", 10, lookups.generation)
    lookups.set_listening("db", False)              # one of two lost: the other still hears everything
    assert lookups.is_listening("db") and lookups.get("db", "h") is None   # emptied on the edge
    lookups.put("db", "h", "acme", 10, lookups.generation)
    assert lookups.get("db", "h") == "acme"
    lookups.set_listening("db", False)              # no listener left: nothing served any more
    assert lookups.get("db", "h") is None
    lookups.put("db", "h", "acme", 10, lookups.generation)
    assert lookups.get("db", "h") is None


def test_no_listener_on_sqlite_or_with_reuse_off(tmp_path):
    from api.key_cache import start_listener

    assert start_listener(f"sqlite:///{tmp_path}/x.db", 5, 10.0) is None
    assert start_listener("postgresql+psycopg://postgres@127.0.0.1:5432/x", 5, 0) is None
