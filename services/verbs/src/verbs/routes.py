"""Inbound verbs under ``/api/federation/v1/`` (public listener, mTLS via nginx)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request

from fedcore.db import SessionDep
from fedcore.responses import JsonResponse
from verbs.schemas import GetRequest, ListRequest, SearchRequest
from verbs.service import VerbService

router = APIRouter(prefix="/api/federation/v1", default_response_class=JsonResponse)


def _service(request: Request) -> VerbService:
    service: VerbService = request.app.state.verb_service
    return service


@router.get("/capabilities")
async def capabilities(request: Request, session: SessionDep) -> JsonResponse:
    service = _service(request)
    body = await service.run(request, session, "capabilities", None, service.capabilities)
    return JsonResponse(body)


@router.post("/list/{resource}")
async def list_rows(
    resource: str, request: Request, session: SessionDep, body: ListRequest | None = None
) -> JsonResponse:
    service = _service(request)
    payload = body or ListRequest()

    async def action(context: Any) -> Any:
        return await service.list(session, context, resource, payload)

    return JsonResponse(await service.run(request, session, "list", resource, action))


@router.post("/search/{resource}")
async def search_rows(
    resource: str, request: Request, session: SessionDep, body: SearchRequest
) -> JsonResponse:
    service = _service(request)

    async def action(context: Any) -> Any:
        return await service.search(session, context, resource, body)

    return JsonResponse(await service.run(request, session, "search", resource, action))


@router.post("/get/{resource}/{row_id}")
async def get_row(
    resource: str,
    row_id: str,
    request: Request,
    session: SessionDep,
    body: GetRequest | None = Body(default=None),  # noqa: B008 - FastAPI's declaration style
) -> JsonResponse:
    service = _service(request)

    async def action(context: Any) -> Any:
        return await service.get(session, context, resource, row_id)

    return JsonResponse(await service.run(request, session, "get", resource, action))
