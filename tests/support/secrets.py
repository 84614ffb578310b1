"""Random secrets for test settings (generated per run, never committed)."""

from __future__ import annotations

import secrets


def random_secret() -> str:
    return secrets.token_urlsafe(40)


def secrets_env(prefix: str) -> dict[str, str]:
    return {
        f"{prefix}SECRETS__GATEWAY_SECRET": random_secret(),
        f"{prefix}SECRETS__PROXY_SECRET": random_secret(),
        f"{prefix}SECRETS__SERVICE_TOKEN": random_secret(),
    }
