"""artifacts.sha256: every artifact listing carries the file's checksum (issue #15)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 01:10:00

Nullable: artifacts of jobs that finished before this revision have no recorded checksum (the
API shows null for them); every new artifact gets one, computed while it is stored.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('artifacts') as batch:
        batch.add_column(sa.Column('sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('artifacts') as batch:
        batch.drop_column('sha256')
