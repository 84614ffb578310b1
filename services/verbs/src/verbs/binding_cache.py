"""A certificate-binding cache that a database notification empties at once.

The trust path reads, per request, a certificate's binding: the certificate record, its grant, its
peer and the grant subject's teams (``verbs.reads.load_certificate_binding``). Every check on it
(revoked, grant status and expiry, peer state, grant ↔ subject ↔ peer) still runs on every
request; this cache only saves the read, and only while the data cannot have changed unseen:

* Triggers on every table the binding is read from (migration 0003: certificates, grants, peers,
  team memberships; any insert, update, delete or truncate, whoever writes it) send a
  notification on :data:`CHANNEL` when the writing transaction commits. Each worker holds one
  connection that ``LISTEN``\\ s; a notification empties the cache.
* A *generation* counter closes the race between a read and a notification: a binding read is
  stored only if no notification (and no listener loss) arrived between the start of its read
  and its storing; an entry is only served in the generation it was stored in.
* Without a healthy listener nothing is served from the cache (every request reads the
  database). The listener is checked every ``health_check_seconds``; a lost one is reconnected.
  It only starts listening when all four triggers exist and are enabled.
* Every entry also has a hard age limit (``max_age_seconds``), for a notification lost in a way
  the listener cannot see (a silently dead network path): the longest a change could go unseen.

So a revocation is refused as soon as its notification arrives (milliseconds) and never later than
``max_age_seconds``, within the ≤ 1 s the design allows (docs/security.md, docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from verbs.reads import CertificateBinding

log = logging.getLogger("verbs.binding_cache")

CHANNEL = "mosaic_binding_changed"  # the migration's trigger function notifies on it
# The triggers that announce every change (migration 0003), by table. Without all of them
# firing for ordinary sessions (enabled 'O'rigin or 'A'lways; not 'D'isabled, not 'R'eplica-only),
# a change could go unannounced: the cache then stays off.
TRIGGERS = {
    "federation_certificates": "federation_certificates_binding_changed",
    "federation_grants": "federation_grants_binding_changed",
    "federation_peers": "federation_peers_binding_changed",
    "team_members": "team_members_binding_changed",
}
_TRIGGERS_PRESENT = """
SELECT count(*) FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid
 WHERE NOT t.tgisinternal AND t.tgenabled IN ('O', 'A')
   AND c.oid = ANY(%(tables)s::regclass[])
   AND (c.relname || '.' || t.tgname) = ANY(%(pairs)s)
"""
_TRIGGER_PARAMS = {
    "tables": list(TRIGGERS),
    "pairs": [f"{table}.{trigger}" for table, trigger in TRIGGERS.items()],
}

Connect = Callable[[], Awaitable[AsyncConnection[Any]]]


class MissingTriggers(RuntimeError):
    """The database would not announce every change (migration 0003 missing or disabled)."""


@dataclass(frozen=True)
class _Entry:
    binding: CertificateBinding
    generation: int
    read_at: float  # monotonic, when its read started


class BindingCache:
    def __init__(
        self,
        connect: Connect,
        *,
        max_age_seconds: float,
        size: int = 4096,
        health_check_seconds: float = 5.0,
        retry_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self.max_age_seconds = max_age_seconds
        self.size = size
        self.health_check_seconds = health_check_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._generation = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    # -- serving -------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._listening

    def begin_read(self) -> tuple[int, float] | None:
        """Call before reading a binding from the database: the token to :meth:`store` it with,
        or None when nothing may be cached now (no healthy listener)."""
        if not self._listening:
            return None
        return self._generation, self._clock()

    def store(self, serial: str, binding: CertificateBinding, token: tuple[int, float]) -> None:
        """Keep a binding read since :meth:`begin_read` returned ``token`` — unless anything was
        invalidated in between (then the read may predate a change that was just announced)."""
        generation, read_at = token
        if not self._listening or generation != self._generation:
            return
        self._entries[serial] = _Entry(binding, generation, read_at)
        self._entries.move_to_end(serial)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def get(self, serial: str) -> CertificateBinding | None:
        entry = self._entries.get(serial)
        if entry is None:
            return None
        if (
            not self._listening
            or entry.generation != self._generation
            or self._clock() - entry.read_at >= self.max_age_seconds
        ):
            del self._entries[serial]
            return None
        return entry.binding

    def invalidate(self) -> None:
        """Forget everything, including reads in flight (their generation is now stale)."""
        self._generation += 1
        self._entries.clear()

    # -- the listener --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="binding-cache-listen")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_listening(False)

    def _set_listening(self, listening: bool) -> None:
        # Both ways the cache starts over: while not listening, changes may have gone unseen.
        self._listening = listening
        self.invalidate()

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the type only: a message may carry connection details
                log.warning("binding cache listener lost", extra={"error": type(exc).__name__})
            finally:
                self._set_listening(False)
            await asyncio.sleep(self.retry_seconds)

    @staticmethod
    async def _check_triggers(conn: AsyncConnection[Any]) -> None:
        cursor = await conn.execute(_TRIGGERS_PRESENT, _TRIGGER_PARAMS)
        present = await cursor.fetchone()
        if present is None or present[0] != len(TRIGGERS):
            raise MissingTriggers("the binding-change triggers are missing or disabled")

    async def _listen_once(self) -> None:
        conn = await self._connect()
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
            await self._check_triggers(conn)
            self._set_listening(True)  # from here on, every committed change is announced
            while True:
                async for _ in conn.notifies(timeout=self.health_check_seconds):
                    self.invalidate()
                # No notification for a while: is the connection still there, and are the
                # triggers still firing (an ALTER TABLE … DISABLE TRIGGER since)?
                await asyncio.wait_for(self._check_triggers(conn), self.health_check_seconds)
        finally:
            self._listening = False
            await conn.close()
