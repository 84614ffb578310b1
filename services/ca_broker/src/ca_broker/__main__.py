"""``python -m ca_broker`` serves the broker; ``python -m ca_broker init`` creates the CA (if
missing), writes the PKI files and the CRL, then exits (the launcher and compose run it once)."""

from __future__ import annotations

import asyncio
import sys

from ca_broker.app import build_broker, create_app
from ca_broker.settings import Settings
from fedcore.db import create_engine, create_sessionmaker
from fedcore.runner import load_settings_or_exit, run_service


async def _init(settings: Settings) -> None:
    engine = create_engine(settings.db)
    try:
        state = await build_broker(settings, create_sessionmaker(engine))
        await state.service.backend.aclose()
        print(f"ca-broker: PKI files written to {state.files.directory}")
    finally:
        await engine.dispose()


def main() -> None:
    if sys.argv[1:] == ["init"]:
        asyncio.run(_init(load_settings_or_exit("ca_broker", Settings)))
        return
    if sys.argv[1:]:
        print("usage: python -m ca_broker [init]", file=sys.stderr)
        raise SystemExit(2)
    run_service("ca_broker", Settings, create_app)


if __name__ == "__main__":
    main()
