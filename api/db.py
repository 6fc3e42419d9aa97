"""Engine, sessions and the migration check shared by the API and the worker."""
from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .models import utcnow


def _migrations_dir() -> Path:
    """The Alembic scripts: `migrations/` of a source checkout, or the copy an installed wheel
    ships as the package `vtrans_migrations` (pyproject.toml maps one onto the other), so a
    worker machine that only ran `pip install vtrans` can still `vtrans migrate`."""
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    import importlib.util

    spec = importlib.util.find_spec("vtrans_migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Alembic migrations are missing: neither a source checkout's migrations/ nor the "
                           "installed package vtrans_migrations was found")
    return Path(list(spec.submodule_search_locations)[0])


MIGRATIONS_DIR = _migrations_dir()


class DatabaseNotMigrated(RuntimeError):
    pass


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


# Pool options for Postgres engines made from now on (configure_pool; defaults as in Settings).
_POOL = {"pool_size": 20, "max_overflow": 20, "pool_timeout": 30.0}


def configure_pool(pool_size: int, max_overflow: int, pool_timeout: float) -> None:
    """Set the pool options of this process's engines (the API calls it with its settings before
    serving). Engines already made with other options are dropped and made again on next use."""
    wanted = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if wanted != _POOL:
        _POOL.update(wanted)
        while _made:
            _made.pop().dispose()
        get_engine.cache_clear()
        autocommit_engine.cache_clear()
        _sessionmaker.cache_clear()


_made: set[Engine] = set()   # Postgres engines of this process, for configure_pool


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    _ensure_sqlite_dir(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        # API and worker write the same file: WAL lets readers proceed while one writer works.
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(url, **_POOL)
    _ping_when_idle(engine)
    _made.add(engine)
    return engine


# A pooled connection that sat unused this long is pinged before use (see _ping_when_idle).
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping, but only for a connection that has been idle in the pool for a while.

    pool_pre_ping sends `SELECT 1` at every checkout: a round trip and ~0.3 ms of API CPU per
    request (issue #16's load benchmark). What it guards against — a database restarted, or a
    connection cut by a proxy's idle timeout — happens while connections sit in the pool; a
    connection returned a moment ago was just used successfully. So the ping runs only after
    PING_AFTER_IDLE_SECONDS in the pool; a connection found dead is replaced by the pool before
    the request sees it (DisconnectionError at checkout), as with pool_pre_ping."""
    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn, record) -> None:
        record.info["vtrans_returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn, record, _proxy) -> None:
        returned = record.info.get("vtrans_returned_at")
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
            return   # a new connection, or one in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection failed its ping")


@lru_cache(maxsize=8)
def autocommit_engine(url: str) -> Engine:
    """get_engine(url) in autocommit: the same pool, each statement its own transaction, so no
    BEGIN and no COMMIT round trip around a read."""
    return get_engine(url).execution_options(isolation_level="AUTOCOMMIT")


@lru_cache(maxsize=8)
def _sessionmaker(url: str, autocommit: bool = False) -> sessionmaker:
    return sessionmaker(autocommit_engine(url) if autocommit else get_engine(url), expire_on_commit=False)


def open_session(url: str, autocommit: bool = False) -> Session:
    """A new session on the process's engine for `url` (no connection until its first query).

    autocommit=True is for reads that need no snapshot across their statements (the API's GET
    routes): without a transaction to open and end, a GET makes two fewer round trips."""
    return _sessionmaker(url, autocommit)()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = _sessionmaker(url)()
    try:
        yield session
    except BaseException:
        rollback_and_close(session)
        raise
    commit_and_close(session)


@contextmanager
def read_scope(url: str) -> Iterator[Session]:
    """A session for reads only, in autocommit (open_session): closed after, nothing to commit."""
    session = open_session(url, autocommit=True)
    try:
        yield session
    finally:
        session.close()


def db_now(session: Session) -> datetime:
    """The database's clock, for every time one process writes and another checks: retry_at,
    job leases, the reaper's cutoff, webhook locks and due times. Workers on several machines
    then read one clock, so one whose clock runs ahead cannot take over a live attempt (or claim
    a waiting job early), and one whose clock runs behind cannot renew a lease that others
    already see as expired. Only the broker's eta is still timed by the receiving worker's clock
    (jobstore.reschedule_early). Postgres now() is the transaction's start, constant within it.
    SQLite runs inside the worker process, and every worker sharing its file shares the
    machine and its clock: that clock is the database's."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(select(func.now())).scalar_one()
    return utcnow()


def commit_and_close(session: Session) -> None:
    """Commit (rolled back if the commit itself fails); the session is closed either way.
    Also what the request-scoped session of api/deps.py runs in a worker thread at the end."""
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def rollback_and_close(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    from alembic import command

    _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), "head")


def check_migrated(url: str) -> None:
    """Refuse to run against a database whose schema is not at the latest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    with get_engine(url).connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current != heads:
        raise DatabaseNotMigrated(
            f"The database {_safe_url(url)} is not migrated (at revision {sorted(current) or 'none'}, "
            f"need {sorted(heads)}). Run `vtrans migrate` first (`vtrans serve` does this itself).")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
