"""jobs.retry_message_id: the broker message a job waiting for the hub is due to be run by (issue #14)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 15:00:00

A job sent back to the queue until `retry_at` (migration 0007) gets one broker message with that
eta; its id is recorded here. A delivery that arrives before retry_at (an early eta, a worker
whose clock runs ahead, a redelivery) is re-scheduled for the time left only when it is that
message: the conditional UPDATE that hands the row a new id lets one delivery win, so duplicates
never multiply the messages (api/jobstore.reschedule_early). Any other early delivery is dropped.
A plain addition: old workers ignore it, and rows deferred before it (NULL) are re-sent by the
reaper once due, as before.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('retry_message_id', sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('retry_message_id')
