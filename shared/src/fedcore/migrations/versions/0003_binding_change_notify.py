"""notify listeners when anything a certificate binding is read from changes

The verbs keep certificate bindings (certificate + grant + peer + the subject's teams) in a
short-lived cache that a notification on this channel empties at once (verbs.binding_cache).
Statement-level triggers on every table the binding is read from, for every kind of write, so no
writer — a service, the CLI, an operator's SQL — can change a binding without it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "mosaic_binding_changed"  # verbs.binding_cache.CHANNEL
WATCHED = ("federation_certificates", "federation_grants", "federation_peers", "team_members")


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION mosaic_notify_binding_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$
        """
    )
    for table in WATCHED:
        op.execute(
            f"CREATE TRIGGER {table}_binding_changed "
            f"AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION mosaic_notify_binding_changed()"
        )


def downgrade() -> None:
    for table in WATCHED:
        op.execute(f"DROP TRIGGER {table}_binding_changed ON {table}")
    op.execute("DROP FUNCTION mosaic_notify_binding_changed()")
