"""The outbound side of the verbs service, under ``/api/local/v1/`` (admin listener only).

nginx routes ``/api/local/v1/`` from the admin listener (loopback / internal network) to this
service and adds the proxy secret; the public listener has no such location. Every route checks
the proxy secret first (``401 untrusted_proxy``: a process on the host cannot skip nginx), then
the bearer token (``fedcore.admin_auth``).

* ``POST /api/local/v1/query/{resource}`` — user or admin token; see ``verbs.local_service``.
* ``GET  /api/local/v1/connections/{name}/capabilities`` — user or admin token: what this
  gateway may read through that connection, asked of the peer now.
* ``GET  /api/local/v1/circuits`` — admin token: the circuit breakers' state per connection.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from fedcore.admin_auth import CurrentAdmin, CurrentUserOrAdmin
from fedcore.audit import AuditEvent, write_audit_now
from fedcore.db import SessionDep
from fedcore.errors import DomainError
from fedcore.models import ActorType, AuditOutcome
from fedcore.responses import JsonResponse
from verbs.auth import InboundAuthenticator
from verbs.local_schemas import LocalQueryRequest
from verbs.local_service import LocalQueryService
from verbs.routes import parse_body


async def require_proxy(request: Request) -> None:
    authenticator: InboundAuthenticator = request.app.state.verb_service.authenticator
    try:
        authenticator.check_proxy(request)
    except DomainError as refusal:
        await write_audit_now(
            request.app.state.sessionmaker,
            AuditEvent(
                actor_type=ActorType.ADMIN_TOKEN,
                action="local.authenticate",
                outcome=AuditOutcome.DENIED,
                reason_code=refusal.code,
            ),
        )
        raise


local_router = APIRouter(
    prefix="/api/local/v1",
    default_response_class=JsonResponse,
    dependencies=[Depends(require_proxy)],
)


def _service(request: Request) -> LocalQueryService:
    service: LocalQueryService = request.app.state.local_query_service
    return service


@local_router.post("/query/{resource}")
async def query(
    resource: str, request: Request, session: SessionDep, principal: CurrentUserOrAdmin
) -> JsonResponse:
    async def parse() -> LocalQueryRequest:
        return await parse_body(request, LocalQueryRequest, required=True)

    body = await _service(request).query(session, principal, resource, parse)
    return JsonResponse(body)


@local_router.get("/connections/{name}/capabilities")
async def capabilities(
    name: str, request: Request, session: SessionDep, principal: CurrentUserOrAdmin
) -> JsonResponse:
    return JsonResponse(await _service(request).capabilities(session, principal, name))


@local_router.get("/circuits")
async def circuits(request: Request, admin: CurrentAdmin) -> JsonResponse:
    breakers = _service(request).fanout.breakers
    return JsonResponse(
        {
            "items": await breakers.snapshot(),
            "failure_threshold": breakers.policy.threshold,
            "cooldown_seconds": breakers.policy.cooldown_seconds,
        }
    )
