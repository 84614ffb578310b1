"""Bearer secrets (admin tokens, enrollment tokens): 32 random bytes as hex, stored only as
SHA-256. A database leak therefore yields no usable token."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def log_prefix(token: str) -> str:
    """At most 8 characters of a token may appear in a log line."""
    return token[:8]
