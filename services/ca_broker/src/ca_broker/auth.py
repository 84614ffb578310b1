"""Only the other services may call /sign and /revoke: they present the shared service token.

Compared in constant time; the token is never logged. (The broker also listens on a loopback or
internal address only, and nginx routes nothing but the public PKI files to it.)
"""

from __future__ import annotations

import hmac

from fastapi import Request

from fedcore.errors import Unauthorized


def require_service_token(request: Request) -> None:
    expected = request.app.state.settings.secrets.value("service_token").encode()
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), expected):
        raise Unauthorized("a valid service token is required", code="service_token_required")
