"""``mosaic``: the gateway's admin command line.

Exit codes: 0 done; 1 the gateway refused (its error code and message are printed); 2 usage or
configuration error; 3 the admin API (or, for ``admin token create``, the database) is
unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx

from fedcore.cli import admin, ca, dev, federation, secrets, users
from fedcore.cli.client import AdminClient, CliError, resolve_target
from fedcore.cli.output import emit, print_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mosaic",
        description="Mosaic Federation Gateway admin CLI (calls the admin REST API).",
        epilog="`mosaic <group> --help` lists a group's commands. See docs/admin-cli.md.",
    )
    groups = parser.add_subparsers(title="command groups", dest="group", metavar="GROUP")
    groups.required = True
    federation.register(groups)
    users.register(groups)
    admin.register(groups)
    secrets.register(groups)
    dev.register(groups)
    ca.register(groups)
    return parser


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors exit 2 here
    as_json = bool(getattr(args, "json", False))
    try:
        if hasattr(args, "api_call"):
            target = resolve_target(
                admin_url=args.admin_url, token=args.token, gateway=args.gateway
            )
            with AdminClient(target, transport=transport) as api:
                data = args.api_call(api, args)
            emit(data, as_json, args.show)
            return 0
        code: int = args.handler(args)
        return code
    except CliError as exc:
        print_error(exc, as_json)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
