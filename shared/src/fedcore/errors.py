"""Domain errors and the single JSON error envelope.

Every error a client can see is ``{"error": {"code", "message", "request_id"}}`` with a stable
``code``. Domain code raises a subclass of :class:`DomainError`; nothing raises ``HTTPException``.

Exception tree::

    DomainError                      (500 internal_error)
    ├── BadRequest                   (400)
    ├── Unauthorized                 (401)
    ├── Forbidden                    (403)
    ├── NotFound                     (404)
    ├── Conflict                     (409)
    ├── Gone                         (410)
    ├── Unprocessable                (422)
    ├── TooManyRequests              (429)
    └── UpstreamUnavailable          (502/503)
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fedcore.request_id import accept_or_generate, current_request_id
from fedcore.responses import JsonResponse

log = logging.getLogger("fedcore.errors")


class DomainError(Exception):
    """Base of every error that maps to an HTTP answer."""

    status_code: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.audit_detail: str | None = None  # finer reason, for the audit row only

    @property
    def audit_reason(self) -> str:
        """The audit row's reason code: the public code, plus the private detail if any."""
        return f"{self.code}:{self.audit_detail}" if self.audit_detail else self.code

    def headers(self) -> dict[str, str] | None:
        return None

    def details(self) -> dict[str, Any]:
        """Extra, safe fields for the envelope (e.g. validation paths); none by default."""
        return {}


class BadRequest(DomainError):
    status_code = 400
    default_code = "bad_request"


class Unauthorized(DomainError):
    status_code = 401
    default_code = "unauthorized"


class Forbidden(DomainError):
    status_code = 403
    default_code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    default_code = "not_found"


class Conflict(DomainError):
    status_code = 409
    default_code = "conflict"


class Gone(DomainError):
    status_code = 410
    default_code = "gone"


class Unprocessable(DomainError):
    status_code = 422
    default_code = "validation_error"


class TooManyRequests(DomainError):
    status_code = 429
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: int = 1, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_seconds)}


class UpstreamUnavailable(DomainError):
    status_code = 503
    default_code = "upstream_unavailable"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": current_request_id()}
    body.update(extra)
    return {"error": body}


def _status_code_name(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "payload_too_large",
        415: "unsupported_media_type",
        429: "rate_limited",
    }.get(status, "http_error")


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, ours or the framework's, as the one envelope."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JsonResponse:
        if exc.status_code >= 500:
            log.error("domain error", extra={"code": exc.code, "error_message": exc.message})
        return JsonResponse(
            error_body(exc.code, exc.message, **exc.details()),
            status_code=exc.status_code,
            headers=exc.headers(),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JsonResponse:
        # Only the location and the message go out; the offending input value is not echoed,
        # because it may be a secret (a token, a key) the client sent by mistake.
        fields = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
            for err in exc.errors()
        ]
        return JsonResponse(
            error_body("validation_error", "request body or parameters are invalid", fields=fields),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JsonResponse:
        code = _status_code_name(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else code
        return JsonResponse(
            error_body(code, message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> JsonResponse:
        # The client (nginx, when its own client left) closed the connection while we read the
        # body: nobody will read an answer. Not an error of ours: no error-level log line.
        log.info("client disconnected before the request was read")
        return JsonResponse(
            error_body("client_disconnected", "the client closed the connection"), status_code=400
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JsonResponse:
        # This handler runs outside the request-id middleware (Starlette puts it outermost), so
        # the id is taken from the request again; the same rule accepts or replaces it.
        request_id = accept_or_generate(request.headers.get("x-request-id"))
        # The exception text may contain anything (SQL, key material): log the type only.
        log.error(
            "unhandled error",
            extra={"exception_type": type(exc).__name__, "request_id": request_id},
        )
        body = {
            "error": {
                "code": "internal_error",
                "message": "internal error",
                "request_id": request_id,
            }
        }
        return JsonResponse(body, status_code=500, headers={"x-request-id": request_id})
