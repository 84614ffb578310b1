"""The database role the services connect as: not the owner, not a superuser.

The schema belongs to the owner role (the one migrations run as; a superuser in the dev cluster and
in the compose ``postgres`` image). The four services connect as the application role, which may
read and write rows and nothing else:

* no superuser powers — no ``COPY … TO PROGRAM`` (code as the ``postgres`` OS user), no
  ``SET session_replication_role = replica`` (which silences the triggers that empty the verbs'
  binding cache at a revocation);
* not the owner of any table — no ``ALTER TABLE … DISABLE TRIGGER``, no DDL, no ``TRUNCATE``;
  ``CREATE`` on schema ``public`` is not granted (Postgres 15 gives it to nobody by default);
* the audit log is append-only for it: ``SELECT`` and ``INSERT``, no ``UPDATE`` or ``DELETE``;
* ``alembic_version`` is the migrations' alone.

A compromised service (the public enrollment service above all) thus cannot rewrite history,
disarm revocation or escape into the database server's OS account. It still reads and writes
every table the services share; one role per service is the next step (docs/security.md).

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
    # Utility statements take no bound parameters: the password goes in as a quoted literal
    # (never logged by us; the server logs no statements by default).
    verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
    owner.execute(
        sql.SQL(
            "{verb} {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
            "PASSWORD {password}"
        ).format(verb=verb, name=name, password=sql.Literal(password))
    )
    database = owner.execute("SELECT current_database()").fetchone()
    assert database is not None
    statements = [
        sql.SQL("GRANT CONNECT ON DATABASE {db} TO {name}").format(
            db=sql.Identifier(database[0]), name=name
        ),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {name}").format(name=name),
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
        statements.append(
            sql.SQL("REVOKE UPDATE, DELETE ON {table} FROM {name}").format(
                table=sql.Identifier(table), name=name
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
