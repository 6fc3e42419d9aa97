"""Who is asking. Every route takes its tenant from this one dependency.

Issue #5 replaces the body with an API-key check against the api_keys table (hash of the
presented key, not revoked) returning that key's tenant_id; routes need no change.
"""
from __future__ import annotations

from .models import DEFAULT_TENANT


def get_tenant() -> str:
    return DEFAULT_TENANT
