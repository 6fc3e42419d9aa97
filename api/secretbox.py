"""Webhook signing secrets encrypted at rest (issue #14) with the operator's VTRANS_SECRET_KEY.

The service must read a secret back to sign every delivery, so it cannot store a hash; it
stores `v1:<base64url(nonce | AES-256-GCM ciphertext+tag)>` instead, with the row's id as
associated data (a ciphertext copied onto another endpoint's row does not decrypt). A dump of
the database without the key then reveals no secret. The AES key is SHA-256 of the setting,
so any long random string works (`python -c "import secrets; print(secrets.token_urlsafe(32))"`).

Without VTRANS_SECRET_KEY secrets are stored as before (plain `whsec_...`), and rows written
that way stay readable after a key is set (they carry no `v1:` prefix); `vtrans
encrypt-webhook-secrets` encrypts them in place. Every process that creates or sends webhooks
(API, scheduler, `vtrans serve`) must have the same key: a row it cannot decrypt is an error
that names the setting, never a delivery signed with the wrong secret.
"""
from __future__ import annotations

import base64
import hashlib
import os

PREFIX = "v1:"
NONCE_BYTES = 12


class SecretKeyError(RuntimeError):
    """A stored secret cannot be read with the configured key (or there is none)."""


def _aead(key: str):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(hashlib.sha256(key.encode("utf-8")).digest())


def seal(secret: str, row_id: str, key: str | None) -> str:
    """What to store for `secret` on row `row_id`: encrypted when a key is configured."""
    if not key:
        return secret
    nonce = os.urandom(NONCE_BYTES)
    sealed = _aead(key).encrypt(nonce, secret.encode("utf-8"), row_id.encode("utf-8"))
    return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def open_(stored: str, row_id: str, key: str | None) -> str:
    """The plain secret of a stored value (plain legacy values pass through)."""
    if not is_sealed(stored):
        return stored
    if not key:
        raise SecretKeyError(f"webhook {row_id}: its secret is encrypted but VTRANS_SECRET_KEY is not set")
    from cryptography.exceptions import InvalidTag

    raw = base64.urlsafe_b64decode(stored[len(PREFIX):].encode("ascii"))
    try:
        return _aead(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], row_id.encode("utf-8")).decode("utf-8")
    except InvalidTag:
        raise SecretKeyError(f"webhook {row_id}: its secret does not decrypt with VTRANS_SECRET_KEY "
                             "(a different key, or a value copied from another row)") from None
