"""Recent API-key lookups, reused only while revocations are heard at once (issue #16).

Looking the key up on every request cost ~20-30% of a GET's API CPU in the load benchmark (a pool
checkout and an indexed SELECT, for a table that hardly changes). But a revoked key must be refused
at once, whichever process revoked it (the CLI, another API process, an operator's SQL). So a
valid key's tenant is reused only while this process LISTENs on Postgres' `vtrans_api_keys`
channel: a trigger on `api_keys` (migration 0009) notifies every listener of any UPDATE or DELETE,
at commit, and the listener empties the table. While the listener is not connected (starting,
database restarted, SQLite) nothing is reused: every request looks its key up as before. A
connection that dies silently is caught by a ping every PING_SECONDS, and an entry never outlives
`api_key_cache_seconds` whatever happens.

Only valid keys are kept (a stranger's wrong keys are looked up each time and fill nothing), keyed
by the key's SHA-256, never the key itself.
"""
from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "vtrans_api_keys"    # migration 0009's trigger notifies it
APPLICATION_NAME = "vtrans-key-revocations"   # the listening connection, as pg_stat_activity shows it
PING_SECONDS = 5.0             # how soon a silently dead listening connection is noticed
RETRY_SECONDS = 5.0            # between attempts to (re)connect the listener
MAX_ENTRIES = 10_000           # emptied when full: a bound, not an eviction policy


class RecentLookups:
    """Tenant per (database URL, key hash), each with its expiry; usable per URL while a listener
    for that database is connected."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}
        self._listening: dict[str, int] = {}   # connected listeners per database URL
        self._lock = threading.Lock()
        self.generation = 0   # bumped by every clear: a lookup that raced a revocation is not kept

    def get(self, db_url: str, hashed: str) -> str | None:
        if db_url not in self._listening:
            return None
        entry = self._entries.get((db_url, hashed))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def put(self, db_url: str, hashed: str, tenant: str, seconds: float, generation: int) -> None:
        """Keep a lookup that started when `generation` was current (read it before the SELECT)."""
        if seconds <= 0 or db_url not in self._listening:
            return
        with self._lock:
            if generation != self.generation:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[(db_url, hashed)] = (tenant, time.monotonic() + seconds)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.generation += 1

    def is_listening(self, db_url: str) -> bool:
        return db_url in self._listening

    def set_listening(self, db_url: str, listening: bool) -> None:
        """One listener of `db_url` connected (True) or gone (False). Every listener hears every
        notification, so one connected is enough; several exist when a process runs several apps
        (tests). Emptied on both edges: what was revoked while nobody listened is not served later."""
        with self._lock:
            self._entries.clear()
            self.generation += 1
            count = self._listening.get(db_url, 0) + (1 if listening else -1)
            if count > 0:
                self._listening[db_url] = count
            else:
                self._listening.pop(db_url, None)


recent_lookups = RecentLookups()


class RevocationListener:
    """A thread holding one LISTEN connection to the database of `db_url` (Postgres only)."""

    def __init__(self, db_url: str, connect_timeout: int = 5, lookups: RecentLookups = recent_lookups):
        self.db_url, self.connect_timeout, self.lookups = db_url, connect_timeout, lookups
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vtrans-key-revocations", daemon=True)

    def start(self) -> "RevocationListener":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _dsn(self) -> str:
        # SQLAlchemy's URL minus its driver suffix is a libpq URI psycopg connects with.
        return make_url(self.db_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            listening = False
            try:
                with psycopg.connect(self._dsn(), autocommit=True, connect_timeout=self.connect_timeout,
                                     application_name=APPLICATION_NAME) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.lookups.set_listening(self.db_url, True)
                    listening = True
                    self._listen(conn)
            except Exception as exc:   # database down or restarted: serve without reuse meanwhile
                if not self._stop.is_set():
                    log.warning("API-key revocation listener: %s; keys are looked up on every request "
                                "until it reconnects", exc)
            finally:
                if listening:
                    self.lookups.set_listening(self.db_url, False)
            self._stop.wait(RETRY_SECONDS)

    def _listen(self, conn) -> None:
        last_ping = time.monotonic()
        while not self._stop.is_set():
            for _ in conn.notifies(timeout=1.0):
                self.lookups.clear()
            if time.monotonic() - last_ping >= PING_SECONDS:
                conn.execute("SELECT 1")   # raises on a connection that died without a word
                last_ping = time.monotonic()


def start_listener(db_url: str, connect_timeout: int, cache_seconds: float) -> RevocationListener | None:
    """The listener for an API process, or None where lookups are not reused (SQLite, or a cache
    time of 0)."""
    if cache_seconds <= 0 or not db_url.startswith("postgresql"):
        return None
    return RevocationListener(db_url, connect_timeout).start()
