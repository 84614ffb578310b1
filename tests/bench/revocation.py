"""Revocation latency: a peer calls ``capabilities`` in a tight loop on a kept-alive connection;
the grant is revoked through the admin API; the time from sending the PATCH to the first refusal
(401/403) the peer sees. One fresh peer (enrolled through nginx) per trial."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.bench.peers import BenchPeer, enrolled_peer
from tests.support.stack import Gateway


@dataclass(frozen=True)
class Trial:
    refusal_ms: float  # PATCH sent → first refusal received
    revoke_call_ms: float  # PATCH sent → PATCH answered
    calls_before: int
    status: int
    code: str


async def _trial(gw: Gateway, admin: httpx.AsyncClient, peer: BenchPeer) -> Trial:
    revoke_sent: float | None = None
    calls = 0

    async with httpx.AsyncClient(
        base_url=f"{gw.public_url}/api/federation/v1", verify=peer.ssl_context(gw), timeout=10
    ) as client:

        async def loop() -> tuple[float, int, str]:
            nonlocal calls
            while True:
                try:
                    response = await client.get("/capabilities")
                except httpx.TransportError:
                    continue  # nginx reloading after the CRL change closes kept-alive sockets
                if response.status_code in (401, 403):
                    if revoke_sent is None:
                        raise RuntimeError(f"refused before the revocation: {response.text}")
                    code = str(response.json().get("error", {}).get("code", ""))
                    return time.perf_counter(), response.status_code, code
                if response.status_code != 200:
                    raise RuntimeError(f"unexpected {response.status_code}: {response.text}")
                calls += 1

        task = asyncio.create_task(loop())
        await asyncio.sleep(0.15)
        if task.done():
            task.result()
        revoke_sent = time.perf_counter()
        response = await admin.patch(
            f"/api/admin/federation/grants/{peer.grant_id}/revoke", json={"reason": "bench"}
        )
        revoke_done = time.perf_counter()
        if response.status_code != 200:
            task.cancel()
            raise RuntimeError(f"revoke failed: {response.status_code} {response.text[:300]}")
        refused_at, status, code = await asyncio.wait_for(task, timeout=15)
    return Trial(
        refusal_ms=(refused_at - revoke_sent) * 1000,
        revoke_call_ms=(revoke_done - revoke_sent) * 1000,
        calls_before=calls,
        status=status,
        code=code,
    )


async def measure(
    gw: Gateway,
    admin: httpx.AsyncClient,
    user_id: uuid.UUID,
    scope: dict[str, Any],
    trials: int,
    folder: Path,
) -> list[Trial]:
    results = []
    for _ in range(trials):
        peer = await enrolled_peer(gw, admin, user_id, scope, folder)
        results.append(await _trial(gw, admin, peer))
    return results


def summary(trials: list[Trial]) -> dict[str, Any]:
    refusals = sorted(t.refusal_ms for t in trials)
    calls = sorted(t.revoke_call_ms for t in trials)
    return {
        "trials": len(trials),
        "p50_ms": round(refusals[len(refusals) // 2], 2) if refusals else None,
        "max_ms": round(refusals[-1], 2) if refusals else None,
        "revoke_call_p50_ms": round(calls[len(calls) // 2], 2) if calls else None,
        "revoke_call_max_ms": round(calls[-1], 2) if calls else None,
        "refusals": sorted({f"{t.status} {t.code}" for t in trials}),
        "each_ms": [round(t.refusal_ms, 2) for t in trials],
    }
