"""Run the installed ``mosaic`` console script against a launcher-started gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.stack import Gateway

MOSAIC = Path(sys.executable).parent / "mosaic"


def _env(gateway: Gateway | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    if gateway is not None:
        env["MOSAIC_STATE_ROOT"] = str(gateway.spec.state_dir.parent)
        env["MOSAIC_GATEWAY"] = gateway.name
    env.update(extra)
    return env


def mosaic(
    *args: str, gateway: Gateway | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MOSAIC), *args],
        env=env if env is not None else _env(gateway),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mosaic_json(*args: str, gateway: Gateway) -> Any:
    result = mosaic(*args, "--json", gateway=gateway)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess[str], code: str, exit_code: int = 1) -> None:
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert f"error: {code}:" in result.stderr, result.stderr
