"""jobs.retry_at, deferrals, wait_reason, hub_state: a job waiting on the hub waits in the queue (issue #14)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 11:40:00

A hub job whose model download is refused for a while (429/503 with Retry-After, hub unreachable)
no longer sleeps on its worker when the wait is long: the attempt ends, the job goes back to
`queued` with `retry_at` (no claim before it; api/jobstore.defer and claim), `wait_reason` (what
the API shows as waiting_reason), `hub_state` (the download attempts and seconds of waiting used
so far, so the operator's bounds hold across attempts) and `deferrals` (how many attempts ended
that way: they do not count against VTRANS_MAX_ATTEMPTS, which is about workers dying). Plain
additions: old workers ignore them (and would claim a deferred job as soon as a message arrives).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('deferrals', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('wait_reason', sa.Text(), nullable=True))
        batch.add_column(sa.Column('hub_state', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('hub_state')
        batch.drop_column('wait_reason')
        batch.drop_column('deferrals')
        batch.drop_column('retry_at')
