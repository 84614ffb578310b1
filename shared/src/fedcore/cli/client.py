"""Where the admin API is, and a small synchronous client for it.

The URL and the token are resolved independently, first match wins:

1. flags ``--admin-url`` / ``--token``;
2. environment ``MOSAIC_ADMIN_URL`` / ``MOSAIC_ADMIN_TOKEN``;
3. the launcher's state file of the gateway named by ``--gateway`` / ``MOSAIC_GATEWAY``:
   ``<state root>/<gateway>/state.json`` (``admin_url``, ``admin_token``), where the state root
   is ``MOSAIC_STATE_ROOT`` or ``./.devstack``.

Prefer the environment or the state file to ``--token``: a flag is visible in the process list.

Errors: :class:`ConfigError` (exit 2: nothing to connect to, bad flags or files),
:class:`ApiError` (exit 1: the server refused, with its error code and message),
:class:`GatewayUnreachable` (exit 3: no answer from the admin listener).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

DEFAULT_STATE_ROOT: Final = ".devstack"
DEFAULT_TIMEOUT_SECONDS: Final = 30.0
_GATEWAY_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", re.ASCII)


class CliError(Exception):
    exit_code: int = EXIT_USAGE


class ConfigError(CliError):
    """Nothing to connect to, or a flag / file the command cannot use."""

    exit_code = EXIT_USAGE


class GatewayUnreachable(CliError):
    exit_code = EXIT_UNREACHABLE


class Refused(CliError):
    """The gateway refused: a stable error code and a message."""

    exit_code = EXIT_REFUSED

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ApiError(Refused):
    """The server answered with an error envelope (or a non-JSON error)."""

    def __init__(self, status: int, code: str, message: str, body: Any) -> None:
        super().__init__(code, message)
        self.status = status
        self.body = body

    @property
    def fields(self) -> list[str]:
        """A validation error's fields as ``path: message`` (the server never echoes values)."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        found = error.get("fields") if isinstance(error, dict) else None
        if not isinstance(found, list):
            return []
        lines = []
        for field in found:
            if isinstance(field, dict):
                path = ".".join(str(part) for part in field.get("loc", []) if part != "body")
                lines.append(f"{path or '(body)'}: {field.get('msg', '')}")
        return lines

    @property
    def request_id(self) -> str | None:
        if isinstance(self.body, dict):
            error = self.body.get("error")
            if isinstance(error, dict) and isinstance(error.get("request_id"), str):
                return str(error["request_id"])
        return None


@dataclass(frozen=True)
class AdminTarget:
    url: str
    token: str = ""

    def __repr__(self) -> str:  # never print the token
        return f"AdminTarget(url={self.url!r}, token=<{len(self.token)} chars>)"


def state_file(gateway: str, env: Mapping[str, str]) -> Path:
    if _GATEWAY_NAME_RE.fullmatch(gateway) is None:
        # The name becomes a path component: no "../" games.
        raise ConfigError(f"invalid gateway name {gateway!r}")
    root = Path(env.get("MOSAIC_STATE_ROOT") or DEFAULT_STATE_ROOT)
    return root / gateway / "state.json"


def _read_state(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no launcher state file at {path} (is the gateway up?)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} is not a launcher state file")
    return loaded


def resolve_target(
    *,
    admin_url: str | None,
    token: str | None,
    gateway: str | None,
    env: Mapping[str, str] | None = None,
    need_token: bool = True,
) -> AdminTarget:
    env = os.environ if env is None else env
    url = admin_url or env.get("MOSAIC_ADMIN_URL") or None
    secret = token or env.get("MOSAIC_ADMIN_TOKEN") or None
    gateway = gateway or env.get("MOSAIC_GATEWAY") or None
    if gateway and (url is None or secret is None):
        state = _read_state(state_file(gateway, env))
        url = url or _state_value(state, "admin_url")
        secret = secret or _state_value(state, "admin_token")
    if not url:
        raise ConfigError(
            "no admin API: pass --admin-url (or MOSAIC_ADMIN_URL), or --gateway NAME "
            "(or MOSAIC_GATEWAY) to read the launcher's state file"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigError("the admin URL must start with http:// or https://")
    if need_token and not secret:
        raise ConfigError("no admin token: pass --token, set MOSAIC_ADMIN_TOKEN, or use --gateway")
    return AdminTarget(url=url.rstrip("/"), token=secret or "")


def _state_value(state: Mapping[str, Any], key: str) -> str | None:
    value = state.get(key)
    return str(value) if value else None


def _error_from(response: httpx.Response) -> ApiError:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return ApiError(
            response.status_code,
            str(error.get("code", "http_error")),
            str(error.get("message", "")),
            body,
        )
    return ApiError(response.status_code, "http_error", f"HTTP {response.status_code}", body)


class AdminClient:
    """JSON over HTTP to the admin listener, with the bearer token."""

    def __init__(
        self,
        target: AdminTarget,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.target = target
        self._client = httpx.Client(
            base_url=target.url,
            headers={"Authorization": f"Bearer {target.token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = self._client.request(method, path, json=json_body, params=query)
        except httpx.HTTPError as exc:
            raise GatewayUnreachable(
                f"cannot reach the admin API at {self.target.url} ({type(exc).__name__})"
            ) from None
        if response.status_code >= 400:
            raise _error_from(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code, "invalid_response", "the server did not answer JSON", None
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json_body=body if body is not None else {})

    def patch(self, path: str, body: Any = None) -> Any:
        return self.request("PATCH", path, json_body=body if body is not None else {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
