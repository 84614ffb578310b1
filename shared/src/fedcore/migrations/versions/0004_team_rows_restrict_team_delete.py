"""a team that still has rows cannot be deleted (content team_id: SET NULL -> RESTRICT)

With ``ON DELETE SET NULL`` deleting a team silently turned its tasks, notes and credentials into
rows "outside any team" — personal rows of their owner, which every grant with
``include_personal`` of that owner then shares, although the grant never included the team
(fedcore.scope_evaluator). Deleting a team now fails while rows still point at it: move or
delete them first, deliberately.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONTENT_TABLES = ("tasks", "notes", "credentials")


def _recreate(ondelete: str) -> None:
    for table in CONTENT_TABLES:
        name = f"fk_{table}_team_id_teams"
        op.drop_constraint(name, table, type_="foreignkey")
        op.create_foreign_key(name, table, "teams", ["team_id"], ["id"], ondelete=ondelete)


def upgrade() -> None:
    _recreate("RESTRICT")


def downgrade() -> None:
    _recreate("SET NULL")
