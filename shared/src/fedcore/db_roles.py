"""The database role the services connect as: not the owner, not a superuser.

The schema belongs to the owner role (the one migrations run as; a superuser in the dev cluster and
in the compose ``postgres`` image). The four services connect as the application role, which may
read and write rows and nothing else:

* no superuser powers — no ``COPY … TO PROGRAM`` (code as the ``postgres`` OS user), no
  ``SET session_replication_role = replica`` (which silences the triggers that empty the verbs'
  binding cache at a revocation);
* not the owner of any table — no ``ALTER TABLE … DISABLE TRIGGER``, no DDL, no ``TRUNCATE``;
  ``CREATE`` on schema ``public`` is not granted (Postgres 15 gives it to nobody by default);
* the audit log is append-only for it: ``SELECT``, and ``INSERT`` of every column but ``id`` and
  ``created_at`` (so no forged ids that would block later rows, no backdated rows); no
  ``UPDATE`` or ``DELETE``;
* ``alembic_version`` is the migrations' alone;
* each run resets whatever the role may have changed about itself (its password, its defaults:
  a role may ``ALTER ROLE`` itself) and its memberships in other roles.

A compromised service (the public enrollment service above all) thus cannot rewrite the audit
trail, silence the binding-change notifications or escape into the database server's OS account.
It still reads and writes every table the services share — it could, e.g., flip a revoked grant
back; one role per service is the next step (docs/security.md).

:func:`ensure_app_role` is idempotent and runs after every migration (``devstack.bootstrap
migrate``, the launcher and compose's ``migrate`` one-shot), so new tables get their grants.
"""

from __future__ import annotations

import re
from typing import Any, Final

from psycopg import Connection, sql
from sqlalchemy.engine import make_url

DEFAULT_APP_ROLE: Final = "mosaic_app"
APPEND_ONLY_TABLES: Final = ("federation_audit_log",)
# Columns of an append-only table only the server fills: its identity and its clock.
SERVER_SET_COLUMNS: Final = frozenset({"id", "created_at"})
MIGRATIONS_ONLY_TABLES: Final = ("alembic_version",)
_ROLE_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}", re.ASCII)


def ensure_app_role(owner: Connection[Any], role: str, password: str) -> None:
    """Create or update ``role`` and (re)grant exactly its privileges in the connected database.
    ``owner`` must be the schema owner (or a superuser), in autocommit mode."""
    if _ROLE_RE.fullmatch(role) is None:
        raise ValueError("the application role must be a plain lowercase SQL name")
    if len(password) < 24:
        raise ValueError("the application role's password must be at least 24 characters")
    name = sql.Identifier(role)
    exists = owner.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    # Utility statements take no bound parameters, so the password goes in as a literal — as a
    # SCRAM verifier, never in clear (a server logging DDL would otherwise log it).
    verifier = owner.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
    owner.execute(
        sql.SQL(
            "{verb} {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
            "NOINHERIT PASSWORD {password}"
        ).format(verb=verb, name=name, password=sql.Literal(verifier.decode()))
    )
    database = owner.execute("SELECT current_database()").fetchone()
    assert database is not None
    db = sql.Identifier(database[0])
    memberships = owner.execute(
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
        (role,),
    ).fetchall()
    statements: list[sql.SQL | sql.Composed] = [
        # Whatever the role set for itself (ALTER ROLE CURRENT_USER SET …) goes.
        sql.SQL("ALTER ROLE {name} RESET ALL").format(name=name),
        sql.SQL("ALTER ROLE {name} IN DATABASE {db} RESET ALL").format(name=name, db=db),
        *(
            sql.SQL("REVOKE {group} FROM {name}").format(group=sql.Identifier(group), name=name)
            for (group,) in memberships
        ),
        sql.SQL("GRANT CONNECT ON DATABASE {db} TO {name}").format(db=db, name=name),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {name}").format(name=name),
        # From PUBLIC too: before Postgres 15 (or on an upgraded cluster) everyone has it.
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM {name}").format(name=name),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {name}").format(name=name),
        sql.SQL(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {name}"
        ).format(name=name),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {name}").format(
            name=name
        ),
    ]
    for table in APPEND_ONLY_TABLES:
        writable = [
            column
            for (column,) in owner.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            if column not in SERVER_SET_COLUMNS
        ]
        statements.append(
            sql.SQL("REVOKE ALL ON {table} FROM {name}").format(
                table=sql.Identifier(table), name=name
            )
        )
        statements.append(
            sql.SQL("GRANT SELECT ON {table} TO {name}").format(
                table=sql.Identifier(table), name=name
            )
        )
        if writable:
            statements.append(
                sql.SQL("GRANT INSERT ({columns}) ON {table} TO {name}").format(
                    columns=sql.SQL(", ").join(sql.Identifier(c) for c in writable),
                    table=sql.Identifier(table),
                    name=name,
                )
            )
    for table in MIGRATIONS_ONLY_TABLES:
        if owner.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone() != (None,):
            statements.append(
                sql.SQL("REVOKE ALL ON {table} FROM {name}").format(
                    table=sql.Identifier(table), name=name
                )
            )
    with owner.transaction():
        for statement in statements:
            owner.execute(statement)


def app_url(owner_url: str, role: str, password: str) -> str:
    """``owner_url`` (``postgresql+psycopg://owner:pw@host:port/db``) with the application role's
    credentials instead (password URL-quoted)."""
    return (
        make_url(owner_url)
        .set(username=role, password=password)
        .render_as_string(hide_password=False)
    )
