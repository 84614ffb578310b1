"""JSON logs: one object per line, with the request id, and secrets scrubbed defensively.

Code must not log secrets in the first place; the scrubber is a second line of defence that
redacts anything shaped like a PEM private key or a 64-hex enrollment token.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from fedcore.request_id import current_request_id

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)).keys() | {"message", "asctime"}
)
_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)
# 64 hex characters (enrollment/admin tokens, hashes), even glued to a word ("token_<hex>").
_LONG_HEX = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")
# Compact JWS/JWT (one-time tokens for step-ca): three base64url parts starting with "eyJ".
_JWS = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
# user:password@ in URLs (database URLs).
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]+@")
# Bearer credentials in header-like text, and a JWK's private "d".
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
_JWK_D = re.compile(r'("d"\s*:\s*")[^"]+(")')


def scrub(text: str) -> str:
    text = _PEM_PRIVATE_KEY.sub("[redacted private key]", text)
    text = _JWS.sub("[redacted token]", text)
    text = _URL_PASSWORD.sub(r"\g<scheme>:[redacted]@", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    text = _JWK_D.sub(r"\1[redacted]\2", text)
    return _LONG_HEX.sub(lambda m: m.group(0)[:8] + "…[redacted]", text)


def scrub_value(value: Any) -> Any:
    """Scrub strings wherever they sit in an extra: nested dicts, lists, bytes."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes | bytearray):
        return scrub(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {key: scrub_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub_value(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
            "request_id": current_request_id(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = scrub_value(value)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: messages of DB/crypto errors can carry values.
            payload["exception_type"] = record.exc_info[0].__name__
        return orjson.dumps(payload, default=str).decode()


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would print the enrollment token in the path: nginx logs access
    # (with the token redacted); the services do not.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
