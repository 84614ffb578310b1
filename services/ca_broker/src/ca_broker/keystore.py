"""The local CA's root and intermediate, stored in Postgres with the private keys sealed.

Created once (``mosaic ca init`` / ``python -m ca_broker init`` or the first start). Replicas
racing to create it are settled by the unique index on the active role: the loser reloads.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fedcore import pki
from fedcore.models import CaKeyPair, CaKeyRole
from fedcore.sealing import PURPOSE_CA_INTERMEDIATE_KEY, PURPOSE_CA_ROOT_KEY, Sealer

ROOT_KEY_PURPOSE = PURPOSE_CA_ROOT_KEY
INTERMEDIATE_KEY_PURPOSE = PURPOSE_CA_INTERMEDIATE_KEY


async def _load(session: AsyncSession, sealer: Sealer) -> pki.CaHierarchy | None:
    rows = (await session.execute(select(CaKeyPair).where(CaKeyPair.active.is_(True)))).scalars()
    by_role = {row.role: row for row in rows}
    root = by_role.get(CaKeyRole.ROOT)
    intermediate = by_role.get(CaKeyRole.INTERMEDIATE)
    if root is None or intermediate is None:
        return None
    return pki.CaHierarchy(
        root_key=pki.load_private_key(
            sealer.unseal(root.sealed_private_key, purpose=ROOT_KEY_PURPOSE)
        ),
        root_cert=pki.load_pem_chain(root.cert_pem)[0],
        intermediate_key=pki.load_private_key(
            sealer.unseal(intermediate.sealed_private_key, purpose=INTERMEDIATE_KEY_PURPOSE)
        ),
        intermediate_cert=pki.load_pem_chain(intermediate.cert_pem)[0],
    )


async def load_or_create_ca(
    sessionmaker: async_sessionmaker[AsyncSession], sealer: Sealer, gateway_name: str
) -> tuple[pki.CaHierarchy, bool]:
    """Return the active CA hierarchy, creating it if none exists. The bool says "created"."""
    async with sessionmaker() as session:
        existing = await _load(session, sealer)
        if existing is not None:
            return existing, False
        hierarchy = pki.generate_ca_hierarchy(gateway_name)
        session.add_all(
            [
                CaKeyPair(
                    role=CaKeyRole.ROOT,
                    cert_pem=pki.cert_pem(hierarchy.root_cert),
                    sealed_private_key=sealer.seal(
                        pki.private_key_pem(hierarchy.root_key), purpose=ROOT_KEY_PURPOSE
                    ),
                ),
                CaKeyPair(
                    role=CaKeyRole.INTERMEDIATE,
                    cert_pem=pki.cert_pem(hierarchy.intermediate_cert),
                    sealed_private_key=sealer.seal(
                        pki.private_key_pem(hierarchy.intermediate_key),
                        purpose=INTERMEDIATE_KEY_PURPOSE,
                    ),
                ),
            ]
        )
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            loaded = await _load(session, sealer)
            if loaded is None:
                raise
            return loaded, False
        return hierarchy, True
