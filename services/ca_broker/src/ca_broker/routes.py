"""The broker's HTTP surface. /sign and /revoke need the service token; /pki/* is public."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from ca_broker.auth import require_service_token
from ca_broker.schemas import RevokeRequest, RevokeResponse, SignRequest, SignResponse
from ca_broker.service import CaService
from fedcore.db import SessionDep
from fedcore.errors import NotFound

router = APIRouter()
PEM_MEDIA_TYPE = "application/x-pem-file"


def _service(request: Request) -> CaService:
    service: CaService = request.app.state.ca_service
    return service


@router.post("/sign", dependencies=[Depends(require_service_token)], status_code=201)
async def sign(body: SignRequest, session: SessionDep, request: Request) -> SignResponse:
    return await _service(request).sign(session, body)


@router.post("/revoke", dependencies=[Depends(require_service_token)])
async def revoke(body: RevokeRequest, session: SessionDep, request: Request) -> RevokeResponse:
    return await _service(request).revoke(session, body)


@router.get("/pki/ca.pem", response_class=PlainTextResponse)
async def ca_bundle(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.app.state.pki_files.bundle_pem, media_type=PEM_MEDIA_TYPE)


@router.get("/pki/crl.pem", response_class=PlainTextResponse)
async def crl(request: Request) -> PlainTextResponse:
    service = _service(request)
    if service.crl is None or service.crl.current is None:
        # step-ca 0.19 publishes no CRL; revocation is enforced by the verbs (docs/security.md).
        raise NotFound("this CA backend publishes no CRL", code="crl_not_available")
    return PlainTextResponse(service.crl.current.pem, media_type=PEM_MEDIA_TYPE)
