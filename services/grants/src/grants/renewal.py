"""Outbound certificate renewal: this gateway's connections renew their client certificates at
the peer before they expire (DESIGN §1 step 6, §4: "renewed at ~2/3 of it").

For one connection: a new P-256 key (sealed at once, like ``peers/keypair``), a CSR, and
``POST /api/federation/v1/renew`` at the peer over mTLS with the *current* certificate. The answer
is stored only after the same checks as an enrollment: exactly one certificate, for the new key,
naming the connection's grant and subject user, chaining to the connection's pinned CA bundle.
The row moves on with an optimistic ``UPDATE … WHERE cert_serial = <old>``: two renewers racing
(replicas, the scheduler and an admin) cannot overwrite each other's result; the loser's
certificate is never used and expires. The verbs service's client cache notices the new material
and builds a new client.

* ``POST /api/admin/federation/connections/{id}/renew`` — now, whatever the age (admin token);
* the scheduler in the grants service — every ``connection_renewal_interval_seconds``, each
  active connection whose certificate has used ``connection_renewal_fraction`` (2/3) of its
  lifetime. Each attempt writes one audit row ``connection.renew`` (actor ``system`` for the
  scheduler), with the peer's code when it refused.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fedcore import pki
from fedcore.audit import AuditEvent, write_audit_now
from fedcore.csr import make_csr
from fedcore.errors import Conflict, DomainError, NotFound
from fedcore.federation_client import (
    ClientTimeouts,
    ConnectionMaterial,
    FederationClient,
    FederationClientError,
)
from fedcore.federation_oids import MalformedFederationIdentity, extract_federation_identity
from fedcore.models import ActorType, AuditOutcome, ConnectionState, FederationConnection
from fedcore.sealing import PURPOSE_CONNECTION_KEY
from grants.settings import Settings

log = logging.getLogger("grants.renewal")


class RenewalFailed(DomainError):
    """The peer refused or could not be reached (its code), or answered a certificate this
    gateway will not store: a failure on the other side, hence 502."""

    status_code = 502
    default_code = "renewal_failed"


def renewal_due(cert_pem: str, now: datetime, fraction: float) -> bool:
    """Has the certificate used ``fraction`` of its lifetime?"""
    cert = pki.load_pem_chain(cert_pem)[0]
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * fraction


def _public_key_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _checked_leaf(
    connection: FederationConnection, cert_pem: str, chain_pem: str, key: Any
) -> x509.Certificate:
    def refuse(code: str, message: str) -> RenewalFailed:
        return RenewalFailed(message, code=code)

    try:
        leaves = pki.load_pem_chain(cert_pem)
        chain = pki.load_pem_chain(chain_pem)
        roots = pki.load_pem_chain(connection.ca_bundle_pem or "")
    except ValueError:
        raise refuse("certificate_invalid", "the renewed certificate does not parse") from None
    if len(leaves) != 1 or not roots:
        raise refuse("certificate_invalid", "the renewed certificate is not one certificate")
    leaf = leaves[0]
    if _public_key_der(leaf.public_key()) != _public_key_der(key.public_key()):
        raise refuse("certificate_key_mismatch", "the renewed certificate is for another key")
    try:
        identity = extract_federation_identity(leaf)
    except MalformedFederationIdentity:
        raise refuse(
            "certificate_identity_invalid", "the renewed certificate has no valid identity"
        ) from None
    if (identity.grant_id, identity.subject_user_id) != (
        connection.remote_grant_id,
        connection.remote_subject_user_id,
    ):
        raise refuse("certificate_identity_mismatch", "the renewed certificate names another grant")
    fingerprint = pki.fingerprint_sha256(leaf)
    intermediates = [c for c in chain if pki.fingerprint_sha256(c) != fingerprint]
    try:
        pki.verify_client_certificate(leaf, intermediates, roots)
    except pki.ChainVerificationError:
        raise refuse(
            "certificate_chain_invalid", "the renewed certificate does not chain to the pin"
        ) from None
    return leaf


async def _load(session: AsyncSession, connection_id: uuid.UUID) -> FederationConnection:
    connection = (
        await session.execute(
            select(FederationConnection)
            .where(FederationConnection.id == connection_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if connection is None:
        raise NotFound("no such connection", code="connection_not_found")
    if connection.state is not ConnectionState.ACTIVE:
        raise Conflict(
            f"the connection is {connection.state.value}; only an active one renews",
            code="connection_not_active",
        )
    return connection


async def renew_connection(
    session: AsyncSession, settings: Settings, connection_id: uuid.UUID
) -> FederationConnection:
    """Renew one connection's certificate now; the caller's transaction commits the new row."""
    connection = await _load(session, connection_id)
    old_serial = connection.cert_serial
    sealer = settings.secrets.sealer()
    key = pki.new_ec_key()
    csr_pem = make_csr(key, connection.name)
    timeouts = ClientTimeouts(
        connect=settings.connection_renewal_timeout_seconds,
        read=settings.connection_renewal_timeout_seconds,
        write=settings.connection_renewal_timeout_seconds,
        pool=settings.connection_renewal_timeout_seconds,
    )
    try:
        material = ConnectionMaterial.from_row(connection)
        async with FederationClient.create(material, sealer, timeouts=timeouts) as client:
            renewed = await client.renew(csr_pem)
    except FederationClientError as exc:
        raise RenewalFailed(
            f"the peer did not renew the certificate ({exc.code})", code=exc.code
        ) from None
    leaf = _checked_leaf(connection, renewed.cert_pem, renewed.cert_chain_pem, key)
    moved = await session.execute(
        update(FederationConnection)
        .where(
            FederationConnection.id == connection.id,
            FederationConnection.state == ConnectionState.ACTIVE,
            FederationConnection.cert_serial == old_serial,
        )
        .values(
            cert_pem=pki.cert_pem(leaf),
            cert_chain_pem=renewed.cert_chain_pem,
            cert_serial=pki.serial_hex(leaf),
            cert_not_after=leaf.not_valid_after_utc,
            # The new key exists in clear only in this process's memory.
            sealed_private_key=sealer.seal(
                pki.private_key_pem(key), purpose=PURPOSE_CONNECTION_KEY
            ),
            updated_at=pki.utcnow(),
        )
        .returning(FederationConnection.id)
    )
    if moved.first() is None:
        raise Conflict(
            "the connection changed while renewing; try again", code="connection_changed"
        )
    log.info(
        "connection certificate renewed",
        extra={"connection_id": str(connection.id), "serial": pki.serial_hex(leaf)},
    )
    return await _load(session, connection.id)


# ------------------------------------------------------------------------------ the scheduler


async def renew_due_connections(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    now: datetime,
    connection_ids: Collection[uuid.UUID] | None = None,
) -> dict[str, str]:
    """One pass: renew every active connection whose certificate is due (only those in
    ``connection_ids`` when given). Returns ``{connection name: "renewed" | <error code>}``
    for the ones it tried."""
    statement = select(
        FederationConnection.id,
        FederationConnection.name,
        FederationConnection.cert_pem,
        FederationConnection.remote_grant_id,
        FederationConnection.remote_subject_user_id,
    ).where(FederationConnection.state == ConnectionState.ACTIVE)
    if connection_ids is not None:
        statement = statement.where(FederationConnection.id.in_(list(connection_ids)))
    async with sessionmaker() as session:
        rows = (await session.execute(statement.order_by(FederationConnection.name))).all()
    results: dict[str, str] = {}
    for connection_id, name, cert_pem, grant_id, subject_id in rows:
        try:
            due = cert_pem is not None and renewal_due(
                cert_pem, now, settings.connection_renewal_fraction
            )
        except (ValueError, IndexError):
            due = False  # unreadable certificate: an admin has to look, not a loop
        if not due:
            continue
        event = AuditEvent(
            actor_type=ActorType.SYSTEM,
            action="connection.renew",
            resource="connection",
            target_id=str(connection_id),
            grant_id=grant_id,
            subject_user_id=subject_id,
            outcome=AuditOutcome.ALLOWED,
        )
        try:
            async with sessionmaker() as session:
                await renew_connection(session, settings, connection_id)
                await session.commit()
        except DomainError as exc:
            results[name] = exc.code
            log.warning("connection renewal failed", extra={"connection": name, "code": exc.code})
            event = event.with_outcome(AuditOutcome.DENIED, exc.code)
        except Exception as exc:  # one broken connection must not stop the others
            results[name] = "internal_error"
            log.error(
                "connection renewal error",
                extra={"connection": name, "error": type(exc).__name__},
            )
            event = event.with_outcome(AuditOutcome.ERROR, "internal_error")
        else:
            results[name] = "renewed"
        try:
            await write_audit_now(sessionmaker, event)
        except Exception as exc:
            log.error("could not audit a renewal", extra={"error": type(exc).__name__})
    return results


async def renewal_loop(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    """Forever: a pass shortly after start, then one per interval (cancelled at shutdown)."""
    delay = min(5.0, settings.connection_renewal_interval_seconds)
    while True:
        await asyncio.sleep(delay)
        delay = settings.connection_renewal_interval_seconds
        try:
            await renew_due_connections(sessionmaker, settings, pki.utcnow())
        except Exception as exc:  # e.g. the database is briefly away: try again next time
            log.error("renewal pass failed", extra={"error": type(exc).__name__})
