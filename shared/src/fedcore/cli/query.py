"""``mosaic federation query RESOURCE``: the local query API (``POST /api/local/v1/query/…``)
from the command line, and ``mosaic federation connection capabilities NAME``.

``--source`` is ``all`` by default (this gateway + every active connection); ``local`` or
``federated:<connection name>`` narrow it. A source that failed is listed under the rows with
its error code; the command still exits 0 (the answer is partial, not refused).
"""

from __future__ import annotations

import argparse
import re
import urllib.parse
from typing import Any

from fedcore.cli import output
from fedcore.cli.client import AdminClient
from fedcore.cli.common import api_command, since_arg, uuid_arg

QUERY = "/api/local/v1/query"
CONNECTION_CAPABILITIES = "/api/local/v1/connections/{name}/capabilities"
CIRCUITS = "/api/local/v1/circuits"

_SOURCE_RE = re.compile(r"local|all|federated:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


def source_arg(value: str) -> str:
    if _SOURCE_RE.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(
            f"--source must be local, all or federated:<connection name>, not {value!r}"
        )
    return value


def _query(api: AdminClient, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"source": args.source}
    if args.limit is not None:
        body["limit"] = args.limit
    if args.query is not None:
        body["query"] = args.query
    if args.as_user is not None:
        body["as_user"] = args.as_user
    filters = {"status": args.status, "updated_since": args.updated_since}
    if any(value is not None for value in filters.values()):
        body["filter"] = {k: v for k, v in filters.items() if v is not None}
    return api.post(f"{QUERY}/{urllib.parse.quote(args.resource, safe='')}", body)


def _label_key(items: list[dict[str, Any]]) -> str:
    for key in ("title", "name", "username"):
        if any(key in item for item in items):
            return key
    return "title"


def show_query(answer: dict[str, Any]) -> None:
    items: list[dict[str, Any]] = answer.get("items", [])
    columns = [("SOURCE", "_source"), ("VIA", "_connection"), ("ID", "id")]
    label = _label_key(items)
    columns.append((label.upper(), label))
    if any("status" in item for item in items):
        columns.append(("STATUS", "status"))
    output.print_table(items, columns)
    print()
    for source in answer.get("sources", []):
        if source.get("status") == "ok":
            more = ", more available" if source.get("truncated") else ""
            print(
                f"source {source['source']}: ok, {source['count']} rows{more} "
                f"({source['elapsed_ms']} ms)"
            )
        else:
            print(f"source {source['source']}: failed: {source['code']}")
    if answer.get("_partial"):
        failed = ", ".join(f"{e['source']} ({e['code']})" for e in answer.get("errors", []))
        print(f"partial answer: {failed}")


def _capabilities(api: AdminClient, args: argparse.Namespace) -> Any:
    name = urllib.parse.quote(args.name, safe="")
    return api.get(CONNECTION_CAPABILITIES.format(name=name))


def register(federation: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = api_command(
        federation,
        "query",
        "read a resource here and/or through outbound connections (local query API)",
        _query,
        show_query,
        epilog=(
            "examples:\n"
            "  mosaic federation query tasks                      # this gateway + every peer\n"
            "  mosaic federation query notes --source local\n"
            "  mosaic federation query tasks --source federated:a --query research\n"
            "A user token queries as its user; an admin token needs --as-user USER_ID."
        ),
    )
    query.add_argument("resource", help="tasks, notes, credentials, teams or users")
    query.add_argument(
        "--source",
        type=source_arg,
        default="all",
        help="local, all (default) or federated:<connection name>",
    )
    query.add_argument("--query", metavar="TEXT", help="full-text search instead of a list")
    query.add_argument("--limit", type=int, metavar="N", help="rows per source (first page)")
    query.add_argument("--status", choices=["todo", "in_progress", "done"], help="tasks only")
    query.add_argument(
        "--updated-since",
        type=since_arg,
        metavar="WHEN",
        help="only rows updated since: ISO 8601 (UTC if no offset) or an age (30m, 2h, 7d)",
    )
    query.add_argument(
        "--as-user", type=uuid_arg, metavar="USER_ID", help="with an admin token: query as"
    )


def register_connection_commands(
    connections: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    capabilities = api_command(
        connections,
        "capabilities",
        "ask the peer what this gateway may read through a connection",
        _capabilities,
        output.print_record,
    )
    capabilities.add_argument("name", metavar="CONNECTION_NAME")
