"""api_keys: notify API processes of every change, so they may reuse recent key lookups (issue #16)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 07:00:00

An API process reuses a valid key's lookup for a few seconds only while it LISTENs on
`vtrans_api_keys` (api/key_cache.py). This trigger sends that notification at the commit of any
UPDATE or DELETE of `api_keys` (a revocation by the CLI, another API process, or an operator's own
SQL), so a revoked key is refused at once everywhere. A new key needs no notice: unknown keys are
never remembered. Postgres only; on SQLite lookups are never reused and nothing is created. Old API
processes simply do not listen.
"""
from typing import Sequence, Union

from alembic import op


revision: str = '0009'
down_revision: Union[str, None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION vtrans_api_keys_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('vtrans_api_keys', TG_OP);
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
    """)
    op.execute("""
        CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE OR TRUNCATE ON api_keys
        FOR EACH STATEMENT EXECUTE FUNCTION vtrans_api_keys_changed()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("DROP TRIGGER IF EXISTS api_keys_changed ON api_keys")
    op.execute("DROP FUNCTION IF EXISTS vtrans_api_keys_changed()")
