"""Inbound verbs under ``/api/federation/v1/`` (public listener, mTLS via nginx).

Bodies are parsed *after* the trust path, inside ``VerbService.run``: an unauthenticated caller
learns nothing about the schema, and a malformed body from an authenticated peer is refused
(422) with an audit row like every other refusal. A catch-all route audits unknown verbs too.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError

from fedcore.db import SessionDep
from fedcore.errors import NotFound, Unprocessable
from fedcore.responses import JsonResponse
from verbs.auth import FederationContext
from verbs.reads import Connection
from verbs.renewal import Renewer
from verbs.schemas import ListRequest, RenewRequest, SearchRequest
from verbs.service import AllowedAudit, VerbResult, VerbService

router = APIRouter(prefix="/api/federation/v1", default_response_class=JsonResponse)
M = TypeVar("M", bound=BaseModel)


class InvalidBody(Unprocessable):
    default_code = "validation_error"

    def __init__(self, exc: ValidationError) -> None:
        super().__init__("request body is invalid")
        # Location and message only: the offending value is never echoed.
        self.fields = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
            for err in exc.errors(include_input=False, include_url=False)
        ]

    def details(self) -> dict[str, Any]:
        return {"fields": self.fields}


async def parse_body(request: Request, model: type[M], *, required: bool) -> M:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise Unprocessable("a JSON body is required", code="validation_error")
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidBody(exc) from None


def _service(request: Request) -> VerbService:
    service: VerbService = request.app.state.verb_service
    return service


@router.get("/capabilities")
async def capabilities(request: Request) -> JsonResponse:
    service = _service(request)
    return JsonResponse(await service.run(request, "capabilities", None, service.capabilities))


@router.post("/list/{resource}", openapi_extra={"requestBody": {"required": False}})
async def list_rows(resource: str, request: Request) -> JsonResponse:
    service = _service(request)

    async def action(
        conn: Connection, context: FederationContext, audit: AllowedAudit
    ) -> VerbResult:
        payload = await parse_body(request, ListRequest, required=False)
        return await service.list(conn, context, resource, payload, audit)

    return JsonResponse(await service.run(request, "list", resource, action))


@router.post("/search/{resource}")
async def search_rows(resource: str, request: Request) -> JsonResponse:
    service = _service(request)

    async def action(
        conn: Connection, context: FederationContext, audit: AllowedAudit
    ) -> VerbResult:
        payload = await parse_body(request, SearchRequest, required=True)
        return await service.search(conn, context, resource, payload, audit)

    return JsonResponse(await service.run(request, "search", resource, action))


@router.post("/get/{resource}/{row_id}")
async def get_row(resource: str, row_id: str, request: Request) -> JsonResponse:
    service = _service(request)

    async def action(
        conn: Connection, context: FederationContext, audit: AllowedAudit
    ) -> VerbResult:
        return await service.get(conn, context, resource, row_id, audit)

    return JsonResponse(await service.run(request, "get", resource, action))


@router.post("/renew")
async def renew(request: Request, session: SessionDep) -> JsonResponse:
    """Renewal writes (grant lock, certificate record) in the request's session; the allowed
    audit row commits with them."""
    service = _service(request)
    renewer: Renewer = request.app.state.renewer

    async def action(
        conn: Connection, context: FederationContext, audit: AllowedAudit
    ) -> VerbResult:
        payload = await parse_body(request, RenewRequest, required=True)
        return await renewer.renew(session, context, payload)

    # A call that mints a credential: the binding is read fresh, never from the cache.
    return JsonResponse(
        await service.run(request, "renew", None, action, audit_session=session, fresh_binding=True)
    )


@router.api_route(
    "/{unknown:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def unknown_verb(unknown: str, request: Request) -> JsonResponse:
    service = _service(request)

    async def action(
        conn: Connection, context: FederationContext, audit: AllowedAudit
    ) -> VerbResult:
        raise NotFound("no such verb", code="unknown_verb")

    return JsonResponse(await service.run(request, "unknown", None, action))
