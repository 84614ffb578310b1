"""The CRL: built from ``federation_certificates``, written where nginx's ``ssl_crl`` reads it,
and regenerated well before ``nextUpdate``.

An expired CRL makes nginx refuse *every* handshake, so the refresher rewrites it when half its
validity has passed, and after every revocation. nginx checks CRLs for the whole chain
(``X509_V_FLAG_CRL_CHECK_ALL``), so the file holds the intermediate's CRL (peer certificates) and
the root's CRL (the intermediate) together.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ca_broker.nginx_signal import reload_nginx
from fedcore import pki
from fedcore.files import write_atomically
from fedcore.models import FederationCertificate

log = logging.getLogger("ca_broker.crl")


@dataclass(frozen=True)
class PublishedCrl:
    pem: str
    crl_number: int
    next_update: datetime
    revoked_serials: frozenset[str]


async def _next_crl_number(session: AsyncSession) -> int:
    # Atomic across replicas: RFC 5280 wants CRL numbers to increase monotonically.
    result = await session.execute(
        text(
            "INSERT INTO ca_crl_state (id, crl_number) VALUES (1, 1) "
            "ON CONFLICT (id) DO UPDATE SET crl_number = ca_crl_state.crl_number + 1, "
            "updated_at = now() RETURNING crl_number"
        )
    )
    return int(result.scalar_one())


async def revoked_serials(session: AsyncSession) -> list[tuple[str, datetime]]:
    rows = await session.execute(
        select(FederationCertificate.serial, FederationCertificate.revoked_at)
        .where(FederationCertificate.revoked_at.is_not(None))
        # An expired certificate fails verification anyway; RFC 5280 lets it leave the CRL.
        .where(FederationCertificate.not_after > pki.utcnow() - timedelta(days=1))
        .order_by(FederationCertificate.serial)
    )
    return [(serial, revoked_at) for serial, revoked_at in rows.all() if revoked_at is not None]


# Live certificates whose grant or peer is revoked: the revocation's own step (list them, have
# the broker revoke each) runs after it committed, and can fail or be cut short (the grants
# service dies, the database goes away); revoking again is a 409, so nothing would retry it.
_SWEEP_ORPHANS = text(
    """
    UPDATE federation_certificates c
       SET revoked_at = now(),
           revoked_reason = CASE WHEN p.state = 'revoked' THEN 'peer_revoked'
                                 ELSE 'grant_revoked' END
      FROM federation_grants g, federation_peers p
     WHERE c.grant_id = g.id AND c.peer_id = p.id
       AND c.revoked_at IS NULL
       AND (g.status = 'revoked' OR p.state = 'revoked')
    RETURNING c.serial
    """
)


async def revoke_certificates_of_revoked_grants(session: AsyncSession) -> list[str]:
    """Record as revoked every live certificate of a revoked grant or peer (the backstop for a
    revocation whose certificate step never finished); the serials revoked now."""
    serials = [str(serial) for serial in (await session.execute(_SWEEP_ORPHANS)).scalars()]
    await session.commit()
    return sorted(serials)


class CrlPublisher:
    def __init__(
        self,
        hierarchy: pki.CaHierarchy,
        sessionmaker: async_sessionmaker[AsyncSession],
        crl_path: Path,
        validity: timedelta,
        nginx_pid_file: Path | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.sessionmaker = sessionmaker
        self.crl_path = crl_path
        self.validity = validity
        self.nginx_pid_file = nginx_pid_file
        self.current: PublishedCrl | None = None
        self._lock = asyncio.Lock()

    async def publish(self) -> PublishedCrl:
        async with self._lock, self.sessionmaker() as session:
            # Number first: the upsert locks the state row, so replicas publish one at a time
            # and each reads the revoked set after the previous one committed (a CRL with a
            # higher number never misses a revocation an older one had).
            number = await _next_crl_number(session)
            revoked = await revoked_serials(session)
            now = pki.utcnow()
            leaf_crl = pki.build_crl(
                self.hierarchy.intermediate_key,
                self.hierarchy.intermediate_cert,
                [pki.RevokedEntry(int(serial, 16), revoked_at) for serial, revoked_at in revoked],
                number,
                self.validity,
                now,
            )
            root_crl = pki.build_crl(
                self.hierarchy.root_key, self.hierarchy.root_cert, [], number, self.validity, now
            )
            pem = (
                leaf_crl.public_bytes(serialization.Encoding.PEM)
                + root_crl.public_bytes(serialization.Encoding.PEM)
            ).decode()
            write_atomically(self.crl_path, pem)
            await session.commit()
            self.current = PublishedCrl(
                pem=pem,
                crl_number=number,
                next_update=now + self.validity,
                revoked_serials=frozenset(serial for serial, _ in revoked),
            )
            reload_nginx(self.nginx_pid_file)
            log.info("crl published", extra={"crl_number": number, "revoked": len(revoked)})
            return self.current

    async def refresh_if_needed(self) -> None:
        try:
            async with self.sessionmaker() as session:
                swept = await revoke_certificates_of_revoked_grants(session)
        except Exception as exc:  # never at the cost of the CRL's own refresh (nginx needs it)
            log.error("certificate sweep failed", extra={"error": type(exc).__name__})
            swept = []
        if swept:
            log.warning(
                "revoked certificates a revocation had left live",
                extra={"serials": swept[:20], "count": len(swept)},
            )
        current = self.current
        if current is None or current.next_update - pki.utcnow() < self.validity / 2:
            await self.publish()
            return
        async with self.sessionmaker() as session:
            serials = frozenset(serial for serial, _ in await revoked_serials(session))
        if serials != current.revoked_serials:  # another replica revoked something
            await self.publish()
