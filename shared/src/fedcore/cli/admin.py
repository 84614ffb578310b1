"""``mosaic admin token create``: bootstrap an admin API token from the gateway machine.

This is the one command that talks to the database directly (there is no token yet to call the
API with), so it needs an explicit ``--database-url``. The token is printed once; only its
SHA-256 is stored, and the creation is audited (actor ``system``).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import TYPE_CHECKING, Any

from fedcore.cli import output
from fedcore.cli.client import ConfigError, GatewayUnreachable, Refused
from fedcore.cli.common import group, json_parent, uuid_arg
from fedcore.request_id import new_request_id
from fedcore.tokens import hash_token, new_token

if TYPE_CHECKING:
    from fedcore.models import AdminRole


def create_admin_token(
    database_url: str, role: AdminRole, user_id: uuid.UUID | None, label: str
) -> dict[str, Any]:
    """Store a new token's hash (and an audit row) in one transaction; return the token."""
    # Imported here: every `mosaic` command would otherwise pay SQLAlchemy's import time.
    from sqlalchemy import create_engine, insert, select
    from sqlalchemy.exc import SQLAlchemyError

    from fedcore.models import ActorType, AdminToken, AuditOutcome, FederationAuditLog, User

    if not database_url.startswith("postgresql+psycopg://"):
        raise ConfigError("--database-url must start with postgresql+psycopg://")
    token = new_token()
    token_id = uuid.uuid4()
    engine = create_engine(database_url, connect_args={"connect_timeout": 5})
    try:
        with engine.begin() as conn:
            if (
                user_id is not None
                and conn.execute(select(User.id).where(User.id == user_id)).first() is None
            ):
                raise Refused("user_not_found", "no such user")
            conn.execute(
                insert(AdminToken).values(
                    id=token_id,
                    token_hash=hash_token(token),
                    label=label,
                    role=role,
                    user_id=user_id,
                    revoked=False,
                )
            )
            conn.execute(
                insert(FederationAuditLog).values(
                    request_id=new_request_id(),
                    actor_type=ActorType.SYSTEM,
                    actor_id=None,
                    action="admin_token.create",
                    resource="admin_token",
                    target_id=str(token_id),
                    subject_user_id=user_id,
                    outcome=AuditOutcome.ALLOWED,
                )
            )
    except SQLAlchemyError as exc:
        # The exception text can carry the URL (with its password): report the type only.
        raise GatewayUnreachable(f"database error ({type(exc).__name__})") from None
    finally:
        engine.dispose()
    return {
        "token": token,
        "token_id": str(token_id),
        "role": role.value,
        "user_id": str(user_id) if user_id else None,
        "label": label,
    }


def _token_create(args: argparse.Namespace) -> int:
    from fedcore.models import AdminRole

    role = AdminRole(args.role)
    if role is AdminRole.USER and args.user is None:
        raise ConfigError("--role user needs --user USER_ID")
    if role is AdminRole.ADMIN and args.user is not None:
        raise ConfigError("--user is only for --role user")
    created = create_admin_token(
        args.database_url, role, uuid.UUID(args.user) if args.user else None, args.label
    )
    if args.json:
        output.print_json(created)
    else:
        output.print_record(
            created,
            [("token", "token"), ("token id", "token_id"), ("role", "role"), ("user", "user_id")],
        )
        print("\nThe token is shown only now; store it (e.g. MOSAIC_ADMIN_TOKEN).", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = group(subparsers, "admin", "gateway administration on the gateway machine")
    tokens = admin.add_parser("token", help="admin API tokens", description="admin API tokens")
    token_commands = tokens.add_subparsers(
        title="commands", dest="token_command", metavar="COMMAND"
    )
    token_commands.required = True
    create = token_commands.add_parser(
        "create",
        help="create an admin API token (direct database access)",
        description=(
            "Create an admin API token by writing its hash to the database directly. Prints "
            "the token once."
        ),
        epilog=(
            "example: mosaic admin token create --role admin "
            "--database-url postgresql+psycopg://mosaic:...@127.0.0.2:5432/mosaic"
        ),
        parents=[json_parent()],
    )
    create.add_argument("--role", required=True, choices=["admin", "user"])
    create.add_argument("--user", type=uuid_arg, help="the local user of a `user` token")
    create.add_argument("--label", default="cli", help="a note stored with the token")
    create.add_argument(
        "--database-url",
        required=True,
        metavar="URL",
        help="postgresql+psycopg://... of this gateway (explicit on purpose)",
    )
    create.set_defaults(handler=_token_create)
