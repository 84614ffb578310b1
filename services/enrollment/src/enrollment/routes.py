"""``POST /api/federation/v1/enrollment/{token}`` (public listener, no client certificate)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from enrollment.schemas import EnrollmentRequest, EnrollmentResponse
from enrollment.service import EnrollmentService
from fedcore.db import SessionDep

router = APIRouter()


@router.post("/api/federation/v1/enrollment/{token}", status_code=201)
async def redeem(
    token: str, body: EnrollmentRequest, session: SessionDep, request: Request
) -> EnrollmentResponse:
    service: EnrollmentService = request.app.state.enrollment_service
    return await service.redeem(session, token, body)
