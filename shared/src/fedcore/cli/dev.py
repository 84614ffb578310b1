"""``mosaic dev seed``: fill a gateway's database with the sample world of ``fedcore.dev_seed``
(users, teams, memberships, tasks, notes, credentials in every visibility class). Direct
database access, explicit ``--database-url``; for development and demos only."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from fedcore.cli import output
from fedcore.cli.client import ConfigError, GatewayUnreachable
from fedcore.cli.common import group, json_parent

# The visibility classes of fedcore.dev_seed (listed here so `--help` needs no SQLAlchemy).
CLASSES = "personal, research-own, research-other, ops, finance, bob-personal, carol-personal"


async def _seed(database_url: str, prefix: str, scale: int) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from fedcore.dev_seed import seed

    engine = create_async_engine(database_url, connect_args={"connect_timeout": 5})
    try:
        async with async_sessionmaker(engine)() as session:
            world = await seed(session, prefix=prefix, rows_scale=scale)
            await session.commit()
    finally:
        await engine.dispose()
    return {
        "users": {name: str(i) for name, i in world.users.items()},
        "teams": {name: str(i) for name, i in world.teams.items()},
        "rows": {
            resource: {cls: len(ids) for cls, ids in classes.items()}
            for resource, classes in world.rows.items()
        },
    }


def _seed_command(args: argparse.Namespace) -> int:
    if not args.database_url.startswith("postgresql+psycopg://"):
        raise ConfigError("--database-url must start with postgresql+psycopg://")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        result = asyncio.run(_seed(args.database_url, args.prefix, args.scale))
    except SQLAlchemyError as exc:
        # The text may carry the URL with its password: the type only.
        raise GatewayUnreachable(f"database error ({type(exc).__name__})") from None
    if args.json:
        output.print_json(result)
    else:
        for kind in ("users", "teams"):
            for name, ident in result[kind].items():
                print(f"{kind[:-1]:5} {args.prefix}{name:10} {ident}")
        total = sum(sum(c.values()) for c in result["rows"].values())
        print(f"{total} rows in tasks, notes and credentials")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = group(subparsers, "dev", "development helpers (sample data)")
    seed_cmd = dev.add_parser(
        "seed",
        help="insert the sample world (direct database access)",
        description=(
            "Insert users alice/bob/carol, teams research/ops/finance and content rows in "
            f"every visibility class ({CLASSES}). See fedcore/dev_seed.py."
        ),
        parents=[json_parent()],
    )
    seed_cmd.add_argument("--database-url", required=True, metavar="URL")
    seed_cmd.add_argument("--prefix", default="", help="prefix for user and team names")
    seed_cmd.add_argument("--scale", type=int, default=1, help="multiply every row class")
    seed_cmd.set_defaults(handler=_seed_command)
