"""``mosaic secrets rotate``: re-seal every sealed key under the current secrets.

Direct database access (explicit ``--database-url``). The secrets come from the environment, never
from flags (a flag is visible in the process list):

- ``MOSAIC_GATEWAY_SECRET`` (new) and ``MOSAIC_PREVIOUS_GATEWAY_SECRETS`` (JSON list of old ones)
  re-seal the outbound connections' private keys;
- ``MOSAIC_CA_KEY_SECRET`` and ``MOSAIC_PREVIOUS_CA_KEY_SECRETS`` re-seal the CA's keys.
Either pair may be given alone.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from fedcore.cli import output
from fedcore.cli.client import ConfigError, GatewayUnreachable, Refused
from fedcore.cli.common import group, json_parent

if TYPE_CHECKING:
    from fedcore.sealing import Sealer


def _sealer(current_var: str, previous_var: str) -> Sealer | None:
    from fedcore.sealing import Sealer

    current = os.environ.get(current_var)
    if not current:
        return None
    try:
        previous = json.loads(os.environ.get(previous_var) or "[]")
    except ValueError:
        raise ConfigError(f"{previous_var} must be a JSON list of strings") from None
    if not isinstance(previous, list) or not all(isinstance(p, str) for p in previous):
        raise ConfigError(f"{previous_var} must be a JSON list of strings")
    try:
        return Sealer(current, previous)
    except ValueError as exc:
        raise ConfigError(f"{current_var}: {exc}") from None


def rotate(database_url: str) -> dict[str, Any]:
    # Imported here so other `mosaic` commands start without SQLAlchemy.
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from fedcore.rotation import reseal_ca_keys, reseal_connection_keys
    from fedcore.sealing import SealingError

    if not database_url.startswith("postgresql+psycopg://"):
        raise ConfigError("--database-url must start with postgresql+psycopg://")
    gateway = _sealer("MOSAIC_GATEWAY_SECRET", "MOSAIC_PREVIOUS_GATEWAY_SECRETS")
    ca = _sealer("MOSAIC_CA_KEY_SECRET", "MOSAIC_PREVIOUS_CA_KEY_SECRETS")
    if gateway is None and ca is None:
        raise ConfigError("set MOSAIC_GATEWAY_SECRET and/or MOSAIC_CA_KEY_SECRET")
    result: dict[str, Any] = {}
    engine = create_engine(database_url, connect_args={"connect_timeout": 5})
    try:
        with engine.begin() as conn:
            if gateway is not None:
                done = reseal_connection_keys(conn, gateway)
                result["connection_keys"] = {
                    "resealed": done.resealed,
                    "already_current": done.already_current,
                    "key_id": gateway.key_id,
                }
            if ca is not None:
                done = reseal_ca_keys(conn, ca)
                result["ca_keys"] = {
                    "resealed": done.resealed,
                    "already_current": done.already_current,
                    "key_id": ca.key_id,
                }
    except SealingError:
        # A blob under a key none of the given secrets derive: nothing was changed.
        raise Refused(
            "unknown_sealing_key",
            "a sealed key was sealed with a secret that is neither current nor listed as "
            "previous; nothing was changed",
        ) from None
    except SQLAlchemyError as exc:
        raise GatewayUnreachable(f"database error ({type(exc).__name__})") from None
    finally:
        engine.dispose()
    return result


def _rotate(args: argparse.Namespace) -> int:
    result = rotate(args.database_url)
    if args.json:
        output.print_json(result)
    else:
        for name, counts in result.items():
            print(
                f"{name}: {counts['resealed']} re-sealed, {counts['already_current']} already "
                f"current (key id {counts['key_id']})"
            )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = group(subparsers, "secrets", "sealing secrets on the gateway machine")
    rotate_cmd = secrets.add_parser(
        "rotate",
        help="re-seal every sealed key under the current secrets (direct database access)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[json_parent()],
    )
    rotate_cmd.add_argument("--database-url", required=True, metavar="URL")
    rotate_cmd.set_defaults(handler=_rotate)
