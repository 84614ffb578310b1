"""Fallback load generator (when wrk is unavailable): asyncio + httpx, kept-alive connections.

It saturates long before the server does; the bench therefore also measures its ceiling against
a static nginx location and prints it, so its numbers can be read for what they are.
"""

from __future__ import annotations

import asyncio
import ssl
import time

import httpx

from tests.bench.wrk import LoadResult, Request


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


async def _run(
    base_url: str, request: Request, seconds: float, connections: int, context: ssl.SSLContext
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    status_errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(
        base_url=base_url, verify=context, limits=limits, timeout=10
    ) as client:
        deadline = time.perf_counter() + seconds
        content = request.body.encode() if request.body is not None else None
        headers = {"content-type": "application/json"} if content is not None else {}

        async def worker(offset: int) -> None:
            nonlocal errors, status_errors
            n = offset
            while time.perf_counter() < deadline:
                path = request.paths[n % len(request.paths)]
                n += 1
                started = time.perf_counter()
                try:
                    response = await client.request(
                        request.method, path, content=content, headers=headers
                    )
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    status_errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    ok = len(latencies) - status_errors
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        rps=ok / elapsed if elapsed else 0.0,
        p50_ms=_percentile(latencies, 50) * 1000,
        p90_ms=_percentile(latencies, 90) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else 0.0,
        errors=errors + status_errors,
        status_errors=status_errors,
    )


def run(
    base_url: str, request: Request, seconds: float, connections: int, context: ssl.SSLContext
) -> LoadResult:
    return asyncio.run(_run(base_url, request, seconds, connections, context))
