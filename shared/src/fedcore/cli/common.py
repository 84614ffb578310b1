"""What every command group shares: the API options, the ``--json`` flag and the way an API
command is declared (a call + a human renderer; ``main`` runs it and maps errors to exit codes).
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fedcore.cli.client import AdminClient, ConfigError

ApiCall = Callable[[AdminClient, argparse.Namespace], Any]
Show = Callable[[Any], None]


def json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", help="print the API's JSON answer instead of a table"
    )
    return parent


def api_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, parents=[json_parent()])
    where = parent.add_argument_group("admin API (flags, else env, else the launcher state)")
    where.add_argument(
        "--admin-url",
        metavar="URL",
        help="admin listener, e.g. http://127.0.0.2:8080 (env MOSAIC_ADMIN_URL)",
    )
    where.add_argument(
        "--token",
        metavar="TOKEN",
        help="admin bearer token (env MOSAIC_ADMIN_TOKEN; a flag shows in `ps`)",
    )
    where.add_argument(
        "--gateway",
        metavar="NAME",
        help=(
            "read URL and token from <MOSAIC_STATE_ROOT or .devstack>/NAME/state.json "
            "(env MOSAIC_GATEWAY)"
        ),
    )
    return parent


def group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command group: ``mosaic <name> --help`` lists its commands; no command is a usage error."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    children = parser.add_subparsers(title="commands", dest=f"{name}_command", metavar="COMMAND")
    children.required = True
    return children


def api_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    call: ApiCall,
    show: Show,
    *,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=epilog,
        parents=[api_parent()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(api_call=call, show=show)
    return parser


def uuid_arg(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def read_json_file(path: str) -> Any:
    """A JSON document from a file (``-`` = stdin)."""
    try:
        text = Path("/dev/stdin").read_text() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


_RELATIVE_RE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_arg(value: str) -> str:
    """``--since``: ISO 8601 (UTC if no offset) or a relative age like ``30m``, ``2h``, ``7d``."""
    relative = _RELATIVE_RE.fullmatch(value)
    if relative:
        delta = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        return (datetime.now(UTC) - delta).isoformat()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time or an age like 30m/2h/7d: {value!r}"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def expires_arg(value: str) -> str:
    """``--expires-at``: ISO 8601 (UTC if no offset) or a lifetime from now (``12h``, ``30d``)."""
    relative = _RELATIVE_RE.fullmatch(value)
    if relative:
        delta = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        return (datetime.now(UTC) + delta).isoformat()
    return since_arg(value)
