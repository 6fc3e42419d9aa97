"""Who is asking. Every route takes its tenant from this one dependency.

Issue #5 replaces the body with an API-key check against the api_keys table (hash of the
presented key, not revoked) returning that key's tenant_id; routes need no change.
"""
from __future__ import annotations

# Issue #5: the real dependency lives in api/auth.py (Bearer API key -> tenant, 401 otherwise).
from .auth import get_tenant  # noqa: F401  (re-exported: routes import them from here)
