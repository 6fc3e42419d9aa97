"""jobs: an index for the filtered first page of GET /v1/jobs?status=... (issue #16, load benchmark)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 16:05:00

The list is `WHERE tenant_id = ? AND status IN (...) ORDER BY created_at DESC, id DESC LIMIT n`.
ix_jobs_tenant_created serves the order but not the filter: Postgres walks the tenant's jobs
newest first and discards every job of another status, so a rare status (the few queued jobs
among a tenant's 10,000 finished ones) reads most of the tenant. With status second, one status
is one contiguous, already ordered range. The same index makes the per-submit count of a
tenant's queued + running jobs (api/limits.py) an index-only range.
"""
from typing import Sequence, Union

from alembic import op


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_jobs_tenant_status_created', 'jobs', ['tenant_id', 'status', 'created_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_jobs_tenant_status_created', table_name='jobs')
