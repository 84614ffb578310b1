"""The services' database role (fedcore.db_roles): rows yes, history and the server no.

Against a real migrated database: what the application role may do (read and write rows, append
audit rows) and each thing it must not (rewrite or delete audit rows, disable the binding-change
triggers, silence them with session_replication_role, DDL, TRUNCATE, COPY TO PROGRAM, the
migrations' table), each refused by Postgres with insufficient_privilege."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from fedcore.db_roles import app_url, ensure_app_role


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def app_role(migrated_db_url: str) -> Iterator[tuple[str, str]]:
    """A role of this test's own (roles are cluster-wide; parallel tests share the cluster)."""
    role, password = f"app_{uuid.uuid4().hex[:12]}", secrets.token_urlsafe(32)
    with psycopg.connect(_libpq(migrated_db_url), autocommit=True) as owner:
        ensure_app_role(owner, role, password)
        ensure_app_role(owner, role, password)  # idempotent: a second migrate run
    yield role, _libpq(app_url(migrated_db_url, role, password))
    with psycopg.connect(_libpq(migrated_db_url), autocommit=True) as owner:
        owner.execute(f'DROP OWNED BY "{role}"')
        owner.execute(f'DROP ROLE "{role}"')


def _audit_row(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "INSERT INTO federation_audit_log (request_id, actor_type, action, outcome) "
        "VALUES ('r', 'system', 'test.append', 'allowed')"
    )


def test_the_app_role_reads_and_writes_rows_and_appends_audit_rows(
    app_role: tuple[str, str],
) -> None:
    _, url = app_role
    with psycopg.connect(url, autocommit=True) as app:
        assert app.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
        app.execute(
            "INSERT INTO users (id, username, display_name) VALUES (gen_random_uuid(), 'u', 'U')"
        )
        app.execute("UPDATE users SET display_name = 'V' WHERE username = 'u'")
        assert app.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
        _audit_row(app)
        assert app.execute(
            "SELECT count(*) FROM federation_audit_log WHERE action = 'test.append'"
        ).fetchone() == (1,)
        app.execute("DELETE FROM users WHERE username = 'u'")


FORBIDDEN = {
    "audit-update": "UPDATE federation_audit_log SET outcome = 'denied'",
    "audit-delete": "DELETE FROM federation_audit_log",
    "truncate": "TRUNCATE federation_audit_log",
    "disable-trigger": "ALTER TABLE federation_grants DISABLE TRIGGER ALL",
    "replication-role": "SET session_replication_role = replica",
    "ddl": "CREATE TABLE public.smuggled (id int)",
    "drop": "DROP TABLE tasks",
    "copy-program": "COPY (SELECT 1) TO PROGRAM 'true'",
    "migrations-table": "SELECT * FROM alembic_version",
    "new-role": "CREATE ROLE sneaky LOGIN",
    # Audit rows get their id and time from the server: a forged id would make later rows
    # collide (and every audited action fail), a forged time would backdate history.
    "audit-forged-id": (
        "INSERT INTO federation_audit_log (id, request_id, actor_type, action, outcome) "
        "OVERRIDING SYSTEM VALUE VALUES (999999, 'r', 'system', 'forged', 'allowed')"
    ),
    "audit-backdated": (
        "INSERT INTO federation_audit_log (created_at, request_id, actor_type, action, outcome) "
        "VALUES ('2001-01-01', 'r', 'system', 'forged', 'allowed')"
    ),
}


@pytest.mark.parametrize("statement", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_the_app_role_cannot_rewrite_history_disarm_revocation_or_reach_the_server(
    app_role: tuple[str, str], migrated_db_url: str, statement: str
) -> None:
    _, url = app_role
    with psycopg.connect(_libpq(migrated_db_url), autocommit=True) as owner:
        _audit_row(owner)
        before = owner.execute("SELECT id, outcome FROM federation_audit_log").fetchall()
    with (
        psycopg.connect(url, autocommit=True) as app,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        app.execute(statement)
    with psycopg.connect(_libpq(migrated_db_url), autocommit=True) as owner:
        assert owner.execute("SELECT id, outcome FROM federation_audit_log").fetchall() == before
        assert owner.execute("SELECT to_regclass('public.smuggled')").fetchone() == (None,)


def test_a_second_run_changes_the_password(migrated_db_url: str) -> None:
    role = f"app_{uuid.uuid4().hex[:12]}"
    first, second = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with psycopg.connect(_libpq(migrated_db_url), autocommit=True) as owner:
        ensure_app_role(owner, role, first)
        ensure_app_role(owner, role, second)
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(_libpq(app_url(migrated_db_url, role, first))).close()
        psycopg.connect(_libpq(app_url(migrated_db_url, role, second))).close()
    finally:
        with psycopg.connect(_libpq(migrated_db_url), autocommit=True) as owner:
            owner.execute(f'DROP OWNED BY "{role}"')
            owner.execute(f'DROP ROLE "{role}"')


@pytest.mark.parametrize(
    ("role", "password", "message"),
    [("Robert'); --", "x" * 32, "plain lowercase SQL name"), ("app", "short", "24 characters")],
)
def test_bad_role_names_and_short_passwords_are_refused(
    migrated_db_url: str, role: str, password: str, message: str
) -> None:
    with (
        psycopg.connect(_libpq(migrated_db_url), autocommit=True) as owner,
        pytest.raises(ValueError, match=message),
    ):
        ensure_app_role(owner, role, password)


def test_what_the_role_changed_about_itself_is_undone_by_the_next_migrate(
    app_role: tuple[str, str], migrated_db_url: str
) -> None:
    """A role may ALTER ROLE itself (defaults, password): a compromised service could make every
    service's next connection read-only. The next migrate resets that, and any membership an
    operator or attacker added; the password is stored as a SCRAM verifier."""
    role, url = app_role
    with psycopg.connect(url, autocommit=True) as app:
        app.execute("ALTER ROLE CURRENT_USER SET default_transaction_read_only = on")
    with psycopg.connect(_libpq(migrated_db_url), autocommit=True) as owner:
        owner.execute(f'GRANT pg_read_all_settings TO "{role}"')
        assert owner.execute(
            "SELECT rolconfig FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone() == (["default_transaction_read_only=on"],)
        password = secrets.token_urlsafe(32)
        ensure_app_role(owner, role, password)
        assert owner.execute(
            "SELECT rolconfig FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone() == (None,)
        assert owner.execute(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member "
            "WHERE u.rolname = %s",
            (role,),
        ).fetchone() == (0,)
        [(stored,)] = owner.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchall()
        assert stored.startswith("SCRAM-SHA-256$")
        assert password not in stored
        assert owner.execute(
            "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)
        ).fetchone() == (False,)
    with psycopg.connect(_libpq(app_url(migrated_db_url, role, password)), autocommit=True) as app:
        _audit_row(app)  # writable again
