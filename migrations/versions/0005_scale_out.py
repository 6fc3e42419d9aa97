"""jobs.queue and the workers table: routing by resource and "no live worker serves this queue" (issue #16)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 04:05:00

jobs.queue is the Celery queue the job was routed to (null for jobs created before this revision:
they were sent to the one configured queue). Each worker process upserts a row in `workers`
with the queues it consumes and a last_seen time, so the API can tell a job that waits for a
kind of worker nobody runs from one that merely waits its turn. Both are plain additions, safe
to apply while old workers keep running (they ignore the new column and table).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('queue', sa.String(length=64), nullable=True))
    op.create_index('ix_jobs_status_queue', 'jobs', ['status', 'queue'])
    op.create_table(
        'workers',
        sa.Column('id', sa.String(length=128), primary_key=True),
        sa.Column('hostname', sa.String(length=255), nullable=False),
        sa.Column('queues', sa.JSON(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_workers_last_seen', 'workers', ['last_seen'])


def downgrade() -> None:
    op.drop_index('ix_workers_last_seen', table_name='workers')
    op.drop_table('workers')
    op.drop_index('ix_jobs_status_queue', table_name='jobs')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('queue')
