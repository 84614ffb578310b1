"""``mosaic federation …``: peers, grants, enrollment tokens, outbound connections, audit.

Every command calls the admin REST API (docs/admin-api.md); none talks to the database.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fedcore.cli import output, query
from fedcore.cli.client import AdminClient, CliError, ConfigError
from fedcore.cli.common import (
    api_command,
    expires_arg,
    group,
    read_json_file,
    since_arg,
    uuid_arg,
)
from fedcore.cli.enroll import peer_add

PEERS = "/api/admin/federation/peers"
GRANTS = "/api/admin/federation/grants"
CONNECTIONS = "/api/admin/federation/connections"
AUDIT = "/api/admin/federation/audit"

PEER_FIELDS = [
    ("id", "id"),
    ("name", "name"),
    ("state", "state"),
    ("endpoint", "endpoint_url"),
    ("cert serial", "cert_serial"),
    ("cert fingerprint", "cert_fingerprint_sha256"),
    ("cert not after", "cert_not_after"),
    ("created", "created_at"),
]
PEER_COLUMNS = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("ENDPOINT", "endpoint_url"),
    ("CERT NOT AFTER", "cert_not_after"),
]
GRANT_FIELDS = [
    ("id", "id"),
    ("status", "status"),
    ("subject user", "subject_user_id"),
    ("peer", "peer_id"),
    ("resources", "scope.resources"),
    ("excluded", "scope.excluded_resources"),
    ("teams", "scope.include_teams"),
    ("personal rows", "scope.include_personal"),
    ("max rows/query", "scope.max_rows_per_query"),
    ("expires", "expires_at"),
    ("activated", "activated_at"),
    ("revoked", "revoked_at"),
    ("revoked reason", "revoked_reason"),
    ("created", "created_at"),
]
GRANT_COLUMNS = [
    ("ID", "id"),
    ("STATUS", "status"),
    ("USER", "subject_user_id"),
    ("PEER", "peer_id"),
    ("RESOURCES", "scope.resources"),
    ("EXPIRES", "expires_at"),
]
CONNECTION_COLUMNS = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("ENDPOINT", "endpoint_url"),
    ("REMOTE GRANT", "remote_grant_id"),
    ("CERT NOT AFTER", "cert_not_after"),
    ("CIRCUIT", "circuit.state"),
]
AUDIT_COLUMNS = [
    ("ID", "id"),
    ("TIME", "created_at"),
    ("ACTOR", "actor_type"),
    ("ACTION", "action"),
    ("OUTCOME", "outcome"),
    ("REASON", "reason_code"),
    ("GRANT", "grant_id"),
    ("PEER", "peer_id"),
]


def _table(columns: list[tuple[str, str]]) -> Any:
    def show(page: dict[str, Any]) -> None:
        output.print_table(page["items"], columns)
        output.print_page_hint(page)

    return show


def _record(fields: list[tuple[str, str]]) -> Any:
    return lambda record: output.print_record(record, fields)


# ------------------------------------------------------------------------------ peers


def _peer_create(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.post(PEERS, {"name": args.name, "endpoint_url": args.endpoint})


def _peer_list(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(PEERS, state=args.state, limit=args.limit, cursor=args.cursor)


def _peer_show(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(f"{PEERS}/{args.peer_id}")


def _peer_state(state: str) -> Any:
    def call(api: AdminClient, args: argparse.Namespace) -> Any:
        body = {"state": state}
        if getattr(args, "reason", None):
            body["reason"] = args.reason
        return api.patch(f"{PEERS}/{args.peer_id}/state", body)

    return call


def _show_transition(record: dict[str, Any]) -> None:
    output.print_record(record, PEER_FIELDS)
    if record.get("revoked_grant_ids"):
        print(f"revoked grants: {output.render(record['revoked_grant_ids'])}")
    for item in record.get("certificate_revocations", []):
        print(f"certificate {item['serial']}: {item['status']}")


def _peer_add(api: AdminClient, args: argparse.Namespace) -> Any:
    ca_file_pem = None
    if args.ca_file:
        try:
            ca_file_pem = Path(args.ca_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read --ca-file: {type(exc).__name__}") from None
    return peer_add(api, _enrollment_url(args), name=args.name, ca_file_pem=ca_file_pem)


def _enrollment_url(args: argparse.Namespace) -> str:
    """The URL holds a live bearer token: prefer stdin (``-``) or MOSAIC_ENROLLMENT_URL to the
    command line, where other local users can read it from the process list."""
    if args.enrollment_url == "-":
        url = sys.stdin.readline().strip()
    else:
        url = args.enrollment_url or os.environ.get("MOSAIC_ENROLLMENT_URL", "")
    if not url:
        raise ConfigError("no enrollment URL: pass it, '-' to read stdin, or MOSAIC_ENROLLMENT_URL")
    return url


def _register_peers(federation: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    peers = group(federation, "peer", "peers: gateways that may call us (inbound)")
    create = api_command(
        peers,
        "create",
        "register a peer (state pending until it enrolls)",
        _peer_create,
        _record(PEER_FIELDS),
        epilog="example: mosaic federation peer create gateway-b --endpoint https://b.example:8443",
    )
    create.add_argument("name", help="peer name (becomes the certificate CN): [A-Za-z0-9._-]")
    create.add_argument("--endpoint", metavar="URL", help="the peer's public https URL")

    listing = api_command(peers, "list", "list peers", _peer_list, _table(PEER_COLUMNS))
    listing.add_argument("--state", choices=["pending", "active", "suspended", "revoked"])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--cursor")

    show = api_command(peers, "show", "show one peer", _peer_show, _record(PEER_FIELDS))
    show.add_argument("peer_id", type=uuid_arg, metavar="PEER_ID")

    for name, state, text in (
        ("suspend", "suspended", "suspend an active peer (its calls are refused)"),
        ("resume", "active", "resume a suspended peer"),
        ("revoke", "revoked", "revoke a peer for good, with its live grants and certificates"),
    ):
        command = api_command(peers, name, text, _peer_state(state), _show_transition)
        command.add_argument("peer_id", type=uuid_arg, metavar="PEER_ID")
        if name != "resume":
            command.add_argument("--reason", help="stored with the change")

    add = api_command(
        peers,
        "add",
        "enroll at another gateway with its enrollment URL (creates an outbound connection)",
        _peer_add,
        output.print_record,
        epilog=(
            "example: mosaic federation peer add "
            "'https://a.example:8443/api/federation/v1/enrollment/<token>#ca_fp=<sha256>'\n"
            "The URL's #ca_fp pin (or --ca-file) authenticates the other gateway; "
            "there is no trust on first use."
        ),
    )
    add.add_argument(
        "enrollment_url",
        metavar="ENROLLMENT_URL",
        nargs="?",
        help="the URL, or '-' to read it from stdin (keeps the token out of the process list); "
        "default: $MOSAIC_ENROLLMENT_URL",
    )
    add.add_argument("--name", help="local name of the connection (default: the peer's host)")
    add.add_argument("--ca-file", metavar="PEM", help="the other gateway's CA bundle")


# ------------------------------------------------------------------------------ grants


def _grant_create(api: AdminClient, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {
        "subject_user_id": args.user,
        "peer_id": args.peer,
        "scope": read_json_file(args.scope),
    }
    if args.expires_at:
        body["expires_at"] = args.expires_at
    return api.post(GRANTS, body)


def _grant_list(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(
        GRANTS,
        peer_id=args.peer,
        status=args.status,
        user_id=args.user,
        limit=args.limit,
        cursor=args.cursor,
    )


def _grant_show(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(f"{GRANTS}/{args.grant_id}")


def _grant_revoke(api: AdminClient, args: argparse.Namespace) -> Any:
    body = {"reason": args.reason} if args.reason else {}
    return api.patch(f"{GRANTS}/{args.grant_id}/revoke", body)


def _show_revoked(record: dict[str, Any]) -> None:
    output.print_record(record, GRANT_FIELDS)
    print(f"unused tokens revoked: {record.get('revoked_token_count', 0)}")
    for item in record.get("certificate_revocations", []):
        print(f"certificate {item['serial']}: {item['status']}")


def _grant_token(api: AdminClient, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"revoke_others": args.revoke_others}
    if args.ttl is not None:
        body["ttl_seconds"] = args.ttl
    if args.peer:
        body["peer_id"] = args.peer
    return api.post(f"{GRANTS}/{args.grant_id}/tokens", body)


def _show_token(record: dict[str, Any]) -> None:
    output.print_record(
        record,
        [
            ("enrollment url", "enrollment_url"),
            ("token", "token"),
            ("expires", "expires_at"),
            ("grant", "grant_id"),
            ("peer", "peer_id"),
            ("CA fingerprint", "ca_fingerprint_sha256"),
            ("other tokens revoked", "revoked_other_tokens"),
        ],
    )
    print(
        "\nThe token is shown only now. Hand the enrollment URL to the peer's admin over a "
        "trusted channel; they run: mosaic federation peer add '<enrollment url>'"
    )


def _register_grants(federation: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    grants = group(federation, "grant", "grants: what a peer may read of a local user's data")
    create = api_command(
        grants,
        "create",
        "create a pending grant for a local user and a peer",
        _grant_create,
        _record(GRANT_FIELDS),
        epilog=(
            "scope file example:\n"
            '  {"resources": ["tasks", "notes"], "excluded_resources": [],\n'
            '   "include_teams": [], "include_personal": true, "max_rows_per_query": 100}'
        ),
    )
    create.add_argument("--user", required=True, type=uuid_arg, help="subject user id")
    create.add_argument("--peer", required=True, type=uuid_arg, help="peer id")
    create.add_argument(
        "--scope", required=True, metavar="FILE", help="scope JSON file (- = stdin)"
    )
    create.add_argument(
        "--expires-at",
        metavar="TIME",
        type=expires_arg,
        help="optional expiry: ISO 8601, or a lifetime from now like 12h or 30d",
    )

    listing = api_command(grants, "list", "list grants", _grant_list, _table(GRANT_COLUMNS))
    listing.add_argument("--peer", type=uuid_arg, help="only this peer's grants")
    listing.add_argument("--status", choices=["pending", "active", "revoked", "expired"])
    listing.add_argument("--user", type=uuid_arg, help="only this subject user's grants")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--cursor")

    show = api_command(grants, "show", "show one grant", _grant_show, _record(GRANT_FIELDS))
    show.add_argument("grant_id", type=uuid_arg, metavar="GRANT_ID")

    revoke = api_command(
        grants, "revoke", "revoke a grant (terminal)", _grant_revoke, _show_revoked
    )
    revoke.add_argument("grant_id", type=uuid_arg, metavar="GRANT_ID")
    revoke.add_argument("--reason", help="stored on the grant")

    token = api_command(
        grants,
        "token",
        "issue a single-use enrollment token for a pending grant",
        _grant_token,
        _show_token,
    )
    token.add_argument("grant_id", type=uuid_arg, metavar="GRANT_ID")
    token.add_argument("--ttl", type=int, metavar="SECONDS", help="lifetime, at most 900 (default)")
    token.add_argument("--peer", type=uuid_arg, help="assert the grant belongs to this peer")
    token.add_argument(
        "--revoke-others", action="store_true", help="revoke the grant's earlier unused tokens"
    )


# ------------------------------------------------------------------------------ connections, audit


def _connection_list(api: AdminClient, args: argparse.Namespace) -> Any:
    page = api.get(CONNECTIONS, state=args.state, limit=args.limit, cursor=args.cursor)
    _add_circuits(api, page["items"])
    return page


def _add_circuits(api: AdminClient, connections: list[dict[str, Any]]) -> None:
    """Each connection's circuit breaker, from the verbs service (which makes the outbound
    calls): ``closed`` until a call failed, ``unknown`` if the verbs cannot be asked."""
    try:
        reported = {c["connection_id"]: c for c in api.get(query.CIRCUITS)["items"]}
    except CliError:
        reported = None
    for connection in connections:
        if connection.get("state") != "active":
            connection["circuit"] = None
        elif reported is None:
            connection["circuit"] = {"state": "unknown"}
        else:
            connection["circuit"] = reported.get(connection["id"], {"state": "closed"})


def _connection_show(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(f"{CONNECTIONS}/{args.connection_id}")


def _connection_renew(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.post(f"{CONNECTIONS}/{args.connection_id}/renew")


def _connection_retire(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.post(f"{CONNECTIONS}/{args.connection_id}/retire")


def _connection_delete(api: AdminClient, args: argparse.Namespace) -> Any:
    api.delete(f"{CONNECTIONS}/{args.connection_id}")
    return {"id": str(args.connection_id), "deleted": True}


def _audit(api: AdminClient, args: argparse.Namespace) -> Any:
    return api.get(
        AUDIT,
        grant_id=args.grant,
        peer_id=args.peer,
        outcome=args.outcome,
        action=args.action,
        since=args.since,
        limit=args.limit,
        cursor=args.cursor,
    )


def _register_connections(
    federation: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    connections = group(
        federation, "connection", "connections: our enrolled identities at other gateways"
    )
    listing = api_command(
        connections,
        "list",
        "list outbound connections",
        _connection_list,
        _table(CONNECTION_COLUMNS),
    )
    listing.add_argument("--state", choices=["pending", "active", "revoked"])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--cursor")
    show = api_command(
        connections, "show", "show one outbound connection", _connection_show, output.print_record
    )
    show.add_argument("connection_id", type=uuid_arg, metavar="CONNECTION_ID")
    renew = api_command(
        connections,
        "renew",
        "renew the connection's client certificate at the peer now (automatic at 2/3 of its life)",
        _connection_renew,
        output.print_record,
    )
    renew.add_argument("connection_id", type=uuid_arg, metavar="CONNECTION_ID")
    retire = api_command(
        connections,
        "retire",
        "stop using the connection for good: revoked, its private key wiped (the grant at the "
        "peer is the peer's to revoke)",
        _connection_retire,
        output.print_record,
    )
    retire.add_argument("connection_id", type=uuid_arg, metavar="CONNECTION_ID")
    delete = api_command(
        connections,
        "delete",
        "remove a pending (abandoned) or retired connection; its name is free again",
        _connection_delete,
        output.print_record,
    )
    delete.add_argument("connection_id", type=uuid_arg, metavar="CONNECTION_ID")
    query.register_connection_commands(connections)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    federation = group(
        subparsers, "federation", "federation: peers, grants, tokens, connections, queries, audit"
    )
    _register_peers(federation)
    _register_grants(federation)
    _register_connections(federation)
    query.register(federation)
    audit = api_command(
        federation,
        "audit",
        "page through the audit log, newest first",
        _audit,
        _table(AUDIT_COLUMNS),
        epilog="example: mosaic federation audit --grant <id> --since 2h",
    )
    audit.add_argument("--grant", type=uuid_arg, help="only rows of this grant")
    audit.add_argument("--peer", type=uuid_arg, help="only rows of this peer")
    audit.add_argument("--outcome", choices=["allowed", "denied", "error"])
    audit.add_argument("--action", help="only this action, e.g. grant.revoke")
    audit.add_argument("--since", type=since_arg, help="ISO 8601 time or age (30m, 2h, 7d)")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--cursor", help="next_cursor of the previous page")
