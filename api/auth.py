"""API keys: generation, hashing, lookup, and the tenant dependency every /v1 route uses.

A key is 32 random bytes (urlsafe base64, `vt_` prefix). It has 256 bits of entropy, so a plain
SHA-256 of it is the right thing to store (a slow password hash buys nothing against a key
nobody can guess, and would cost a hash per request). Only the hash and a short display prefix
are stored; the key itself is shown once, when it is created.

`VTRANS_API_KEY` (settings.api_key), when set, is accepted as a key of the tenant `default`
without a database row, so scripts and tests can start a server with a key they already know.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .db import autocommit_engine, session_scope
from .key_cache import recent_lookups
from .models import DEFAULT_TENANT, ApiKey, new_id, utcnow
from .problems import Problem

KEY_PREFIX = "vt_"
DISPLAY_CHARS = 10                      # "vt_" + 7 characters: enough to tell keys apart
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LOCAL_KEY_FILE = "api-key"              # the embedded server's key, inside DATA_DIR

# auto_error=False: we answer 401 problem+json ourselves (HTTPBearer's own is 403 plain JSON).
# Declaring the scheme also puts `bearerAuth` into the OpenAPI document.
bearer = HTTPBearer(auto_error=False, scheme_name="bearerAuth",
                    description="an API key from `vtrans keys create --tenant NAME`")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class CreatedKey:
    id: str
    tenant_id: str
    key: str          # the only time the plain key exists outside the client
    prefix: str


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name or ""):
        raise ValueError(f"tenant name {name!r}: use 1-64 lowercase letters, digits, '-' or '_'")
    return name


def create_key(db_url: str, tenant: str, key: str | None = None) -> CreatedKey:
    check_tenant_name(tenant)
    key = key or generate_key()
    row = ApiKey(id=new_id("key"), tenant_id=tenant, hashed_key=hash_key(key), prefix=key[:DISPLAY_CHARS],
                 created_at=utcnow())
    with session_scope(db_url) as s:
        s.add(row)
    return CreatedKey(row.id, tenant, key, row.prefix)


def revoke_key(db_url: str, key_id: str) -> bool:
    """True when an active key was revoked; False when there is no such active key."""
    with session_scope(db_url) as s:
        done = s.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                         .values(revoked_at=utcnow()).returning(ApiKey.id)
                         .execution_options(synchronize_session=False)).first()
    recent_lookups.clear()   # other processes hear it from the trigger of migration 0009 (api/key_cache.py)
    return done is not None


def list_keys(db_url: str) -> list[dict]:
    with session_scope(db_url) as s:
        rows = s.scalars(select(ApiKey).order_by(ApiKey.tenant_id, ApiKey.created_at)).all()
        return [{"id": k.id, "tenant": k.tenant_id, "prefix": k.prefix, "created_at": _iso(k.created_at),
                 "revoked_at": _iso(k.revoked_at)} for k in rows]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _is_env_key(key: str, env_key: str | None) -> bool:
    return bool(env_key) and hmac.compare_digest(key.encode(), env_key.encode())


def _tenant_for_hash(db: Session | Connection, hashed: str) -> str | None:
    # The lookup is by hash (an index hit); comparing hashes leaks nothing useful about the key.
    return db.scalar(select(ApiKey.tenant_id).where(ApiKey.hashed_key == hashed, ApiKey.revoked_at.is_(None)))


def local_key(db_url: str, data_dir: Path) -> tuple[str, bool]:
    """The embedded server's key: read from DATA_DIR, or created (and saved there, mode 0600) on
    first start. Returns (key, created). A key file whose row was revoked gets replaced."""
    path = data_dir / LOCAL_KEY_FILE
    if path.is_file():
        key = path.read_text(encoding="utf-8").strip()
        with session_scope(db_url) as s:
            if key and _tenant_for_hash(s, hash_key(key)) is not None:
                return key, False
    created = create_key(db_url, DEFAULT_TENANT)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(created.key + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return created.key, True


def unauthorized(detail: str) -> Problem:
    return Problem(401, detail, slug="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="vtrans"'})


def _presented_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    key = credentials.credentials.strip()
    if len(key) > 256:
        raise unauthorized("the API key is not valid")
    return key


def _authorized(request: Request, tenant: str | None) -> str:
    if tenant is None:
        raise unauthorized("the API key is not valid or has been revoked")
    request.state.tenant = tenant
    return tenant


async def get_tenant(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """The tenant of the presented API key; 401 when there is no valid key.

    A revoked key is refused at once, whichever process revoked it. A valid key's lookup is reused
    for a few seconds only while this process hears revocations as they commit (Postgres LISTEN,
    api/key_cache.py); otherwise every request looks its key up.

    Why not the route's own session (one checkout per request): FastAPI runs this dependency and
    a `def` route in separate worker-thread hops, and a connection held between the two made a
    deadlock under overload (issue #16's load benchmark): every worker thread waited in the pool
    for a connection while every connection belonged to a request waiting for a thread to run its
    route. Holding nothing across the hop rules that out; streaming routes (SSE) and uploads hold
    no connection either.

    async: a reused lookup is answered on the event loop, without a worker-thread hop; only a
    lookup in the database goes to a thread."""
    settings, key = request.app.state.settings, _presented_key(credentials)
    hashed = hash_key(key)
    tenant = _known_tenant(settings, key, hashed)
    if tenant is None:
        tenant = await run_in_threadpool(_stored_tenant, settings, hashed)
    return _authorized(request, tenant)


def lookup_tenant(settings, key: str) -> str | None:
    """The tenant of `key` (None: unknown or revoked), as get_tenant finds it (the upload checks
    ask before a route runs)."""
    hashed = hash_key(key)
    return _known_tenant(settings, key, hashed) or _stored_tenant(settings, hashed)


def _known_tenant(settings, key: str, hashed: str) -> str | None:
    """The tenant of `key` when known without the database (the configured key, a reusable recent
    lookup); None: ask _stored_tenant."""
    if _is_env_key(key, settings.api_key):
        return DEFAULT_TENANT
    return recent_lookups.get(settings.db_url, hashed)


def _stored_tenant(settings, hashed: str) -> str | None:
    """One indexed SELECT in a short autocommit connection of its own, back in the pool before this
    returns (no BEGIN/COMMIT; a checkout that needs no ping, api/db.py); a valid key is remembered
    where that is allowed (api/key_cache.py)."""
    generation = recent_lookups.generation
    with autocommit_engine(settings.db_url).connect() as conn:   # a Core connection: no ORM session to run
        tenant = _tenant_for_hash(conn, hashed)
    if tenant is not None:
        recent_lookups.put(settings.db_url, hashed, tenant, settings.api_key_cache_seconds, generation)
    return tenant
