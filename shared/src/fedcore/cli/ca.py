"""``mosaic ca init``: create the gateway's local CA (root + intermediate, keys sealed in
Postgres) if it does not exist yet, and write the PKI files (bundle, CRL, nginx's server
certificate). It runs the ca-broker's own init step with the ca-broker's settings
(``FED_CA_BROKER_*`` in the environment); the broker also does this at first start."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from fedcore.cli.client import ConfigError
from fedcore.cli.common import group


def _init(_: argparse.Namespace) -> int:
    # A subprocess, not an import: fedcore never imports the services.
    if importlib.util.find_spec("ca_broker") is None:
        raise ConfigError("the ca-broker package is not installed here")
    return subprocess.call([sys.executable, "-m", "ca_broker", "init"])


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = group(subparsers, "ca", "the gateway's certificate authority")
    init = ca.add_parser("init", help="create the local CA if missing", description=__doc__)
    init.set_defaults(handler=_init)
