"""idempotency keys for POST /v1/jobs (issue #5)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 11:30:00

The primary key (tenant_id, key) is what makes concurrent duplicate submits safe: the second
INSERT waits for the first transaction and then fails, so only one job row can ever commit.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('idempotency_keys',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', 'key')
    )


def downgrade() -> None:
    op.drop_table('idempotency_keys')
