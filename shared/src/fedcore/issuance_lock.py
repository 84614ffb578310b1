"""The lock that keeps a revocation's list of live certificates complete.

A revocation commits the grant (or peer) as revoked, then lists the peer's live certificates and
has the broker revoke each (CRL). A signature already under way when the revocation commits could
otherwise be recorded just after that list was read, and its certificate would miss the CRL —
e.g. a renewal whose caller gave up on a slow CA (verbs ``renewal_sign_deadline_seconds``) while
the broker went on.

So, per peer, a transaction-scoped advisory lock:

* the broker holds it **shared** from its last look at the grant and peer (after the backend
  signed) until the certificate row commits — signatures for one peer never wait for each other;
* the revocation takes it **exclusive** before it lists the live certificates, so it waits for
  every signature past its last look to commit (and then lists it), while every later signature
  looks after the revocation committed and refuses.

Advisory locks conflict with nothing else, so no row lock (the renewal's and enrollment's grant
locks, the foreign-key checks) can form a cycle with it, and each holder keeps it for a few
statements only — never across a call to the CA.
"""

from __future__ import annotations

import uuid
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# The two-int form of the advisory lock functions: a namespace of ours, then the peer.
NAMESPACE: Final = 0x4D4F5331  # "MOS1"
_KEY: Final = "hashtext(CAST(:peer_id AS text))"
_SHARED: Final = text(f"SELECT pg_advisory_xact_lock_shared({NAMESPACE}, {_KEY})")
_EXCLUSIVE: Final = text(f"SELECT pg_advisory_xact_lock({NAMESPACE}, {_KEY})")


async def hold_for_issuance(session: AsyncSession, peer_id: uuid.UUID) -> None:
    """Broker: until this transaction ends, no revocation of ``peer_id``'s certificates lists
    them. Take it *before* the last look at the grant and peer."""
    await session.execute(_SHARED, {"peer_id": str(peer_id)})


async def wait_for_issuances(session: AsyncSession, peer_id: uuid.UUID) -> None:
    """Revocation: wait until every signature for ``peer_id`` past its last look has committed
    (held until this transaction ends). Take it *after* the revocation committed, before
    listing the live certificates."""
    await session.execute(_EXCLUSIVE, {"peer_id": str(peer_id)})
