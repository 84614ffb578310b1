"""``mosaic user …`` and ``mosaic team …``: the local users and teams a fresh gateway needs to
have a grant subject without a host application."""

from __future__ import annotations

import argparse
from typing import Any

from fedcore.cli import output
from fedcore.cli.client import AdminClient
from fedcore.cli.common import api_command, group, uuid_arg

USERS = "/api/admin/users"
TEAMS = "/api/admin/teams"

USER_FIELDS = [
    ("id", "id"),
    ("username", "username"),
    ("display name", "display_name"),
    ("teams", "team_ids"),
    ("created", "created_at"),
]
TEAM_FIELDS = [("id", "id"), ("name", "name"), ("members", "member_ids"), ("created", "created_at")]


def _page(columns: list[tuple[str, str]]) -> Any:
    def show(page: dict[str, Any]) -> None:
        output.print_table(page["items"], columns)
        output.print_page_hint(page)

    return show


def _user_create(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.post(USERS, {"username": args.username, "display_name": args.display_name or ""})


def _user_list(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(USERS, limit=args.limit, cursor=args.cursor)


def _user_show(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(f"{USERS}/{args.user_id}")


def _team_create(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.post(TEAMS, {"name": args.name})


def _team_list(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(TEAMS, limit=args.limit, cursor=args.cursor)


def _team_show(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(f"{TEAMS}/{args.team_id}")


def _team_add_member(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.post(f"{TEAMS}/{args.team_id}/members", {"user_id": args.user_id})


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = group(subparsers, "user", "local users (grant subjects)")
    create = api_command(
        users,
        "create",
        "create a local user",
        _user_create,
        lambda r: output.print_record(r, USER_FIELDS),
        epilog="example: mosaic user create alice --display-name 'Alice Example'",
    )
    create.add_argument("username")
    create.add_argument("--display-name")
    listing = api_command(
        users,
        "list",
        "list local users",
        _user_list,
        _page(
            [
                ("ID", "id"),
                ("USERNAME", "username"),
                ("NAME", "display_name"),
                ("TEAMS", "team_ids"),
            ]
        ),
    )
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--cursor")
    show = api_command(
        users, "show", "show one user", _user_show, lambda r: output.print_record(r, USER_FIELDS)
    )
    show.add_argument("user_id", type=uuid_arg, metavar="USER_ID")

    teams = group(subparsers, "team", "local teams and memberships")
    create = api_command(
        teams,
        "create",
        "create a team",
        _team_create,
        lambda r: output.print_record(r, TEAM_FIELDS),
    )
    create.add_argument("name")
    listing = api_command(
        teams,
        "list",
        "list teams",
        _team_list,
        _page([("ID", "id"), ("NAME", "name"), ("MEMBERS", "member_ids")]),
    )
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--cursor")
    show = api_command(
        teams, "show", "show one team", _team_show, lambda r: output.print_record(r, TEAM_FIELDS)
    )
    show.add_argument("team_id", type=uuid_arg, metavar="TEAM_ID")
    add = api_command(
        teams,
        "add-member",
        "add a user to a team",
        _team_add_member,
        lambda r: output.print_record(r),
        epilog="example: mosaic team add-member <team-id> <user-id>",
    )
    add.add_argument("team_id", type=uuid_arg, metavar="TEAM_ID")
    add.add_argument("user_id", type=uuid_arg, metavar="USER_ID")
