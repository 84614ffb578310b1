"""``/healthz`` (the process is alive) and ``/readyz`` (it can reach its database)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from fedcore.db import database_is_reachable
from fedcore.errors import error_body
from fedcore.responses import JsonResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, str]:
    return {"status": "ok", "service": request.app.title}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> JsonResponse | dict[str, str]:
    if await database_is_reachable(request.app.state.engine):
        return {"status": "ready", "service": request.app.title}
    return JsonResponse(
        error_body("database_unavailable", "database is not reachable"), status_code=503
    )
