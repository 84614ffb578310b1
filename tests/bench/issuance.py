"""Issuance throughput: the local CA in-process (the crypto floor), the local CA through the
broker's ``/sign`` (internal URL, service token), step-ca through a second broker with
backend=stepca against a real step-ca 0.19 (same run, same database), and enrollments end to end
through nginx."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from ca_broker.backends import IssueRequest
from ca_broker.backends.local import LocalBackend
from ca_broker.postcheck import check_issued
from devstack import stack
from devstack.processes import ProcessRecord, spawn, stop
from fedcore.csr import make_csr, validate_csr
from tests.bench.peers import create_peer_and_grant, prepare_enrollment, public_client, redeem
from tests.support import stepca
from tests.support.federation import gateway_ca
from tests.support.stack import Gateway


@dataclass(frozen=True)
class Throughput:
    count: int
    seconds: float
    errors: int
    p50_ms: float
    max_ms: float

    @property
    def per_second(self) -> float:
        return (self.count - self.errors) / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
            "per_second": round(self.per_second, 1),
            "p50_ms": round(self.p50_ms, 2),
            "max_ms": round(self.max_ms, 2),
        }


@dataclass
class StepCaBroker:
    ca: stepca.StepCa | None = None
    binaries: stepca.StepCaBinaries | None = None
    broker: ProcessRecord | None = None
    url: str = ""
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.broker is not None:
            stop(self.broker)
            self.broker = None
        if self.ca is not None:
            stepca.stop(self.ca)
            self.ca = None


async def _concurrently(
    jobs: list[Any], concurrency: int, one: Any
) -> tuple[float, list[float], int]:
    """``one(job)`` for every job, ``concurrency`` in flight: (seconds, latencies, errors)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while not queue.empty():
            job = queue.get_nowait()
            started = time.perf_counter()
            try:
                ok = await one(job)
            except (httpx.HTTPError, RuntimeError):
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, sorted(latencies), errors


def _throughput(count: int, seconds: float, latencies: list[float], errors: int) -> Throughput:
    return Throughput(
        count=count,
        seconds=seconds,
        errors=errors,
        p50_ms=latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        max_ms=latencies[-1] * 1000 if latencies else 0.0,
    )


def _csrs(count: int, name: str) -> list[str]:
    return [make_csr(ec.generate_private_key(ec.SECP256R1()), name) for _ in range(count)]


async def in_process_local_signatures(
    gw: Gateway, peer: tuple[str, uuid.UUID, uuid.UUID], user_id: uuid.UUID, count: int
) -> Throughput:
    """The crypto floor: LocalBackend.issue + the post-issuance check, no HTTP, no database."""
    hierarchy = await gateway_ca(gw)
    backend = LocalBackend(hierarchy)
    name, peer_id, grant_id = peer
    csrs = _csrs(count, name)
    latencies = []
    started = time.perf_counter()
    for csr_pem in csrs:
        t0 = time.perf_counter()
        request = IssueRequest(
            csr=validate_csr(csr_pem),
            csr_pem=csr_pem,
            peer_name=name,
            peer_id=peer_id,
            grant_id=grant_id,
            subject_user_id=user_id,
            lifetime=timedelta(hours=1),
        )
        check_issued(await backend.issue(request), request, [hierarchy.root_cert])
        latencies.append(time.perf_counter() - t0)
    return _throughput(count, time.perf_counter() - started, sorted(latencies), 0)


async def broker_signatures(
    broker_url: str,
    service_token: str,
    peer: tuple[str, uuid.UUID, uuid.UUID],
    user_id: uuid.UUID,
    count: int,
    concurrency: int,
) -> Throughput:
    name, peer_id, grant_id = peer
    csrs = _csrs(count, name)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=broker_url,
        headers={"Authorization": f"Bearer {service_token}"},
        timeout=30,
        limits=limits,
    ) as client:

        async def one(csr_pem: str) -> bool:
            response = await client.post(
                "/sign",
                json={
                    "csr_pem": csr_pem,
                    "grant_id": str(grant_id),
                    "subject_user_id": str(user_id),
                    "peer_id": str(peer_id),
                },
            )
            return response.status_code == 201

        # One untimed call: connections, caches, step-ca's first token.
        if not await one(csrs[0]):
            raise RuntimeError(f"{broker_url}/sign does not answer 201")
        seconds, latencies, errors = await _concurrently(csrs[1:], concurrency, one)
    return _throughput(count - 1, seconds, latencies, errors)


async def enrollments(
    gw: Gateway,
    admin: httpx.AsyncClient,
    user_id: uuid.UUID,
    scope: dict[str, Any],
    count: int,
    concurrency: int,
) -> Throughput:
    """Peer + grant + token are prepared first (untimed); the redemptions are timed."""
    pending = [await prepare_enrollment(admin, user_id, scope) for _ in range(count)]
    clients = [public_client(gw) for _ in range(concurrency)]
    free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    for client in clients:
        free.put_nowait(client)
    try:

        async def one(job: Any) -> bool:
            client = await free.get()
            try:
                await redeem(client, job)
            finally:
                free.put_nowait(client)
            return True

        seconds, latencies, errors = await _concurrently(pending, concurrency, one)
    finally:
        for client in clients:
            await client.aclose()
    return _throughput(count, seconds, latencies, errors)


async def start_stepca_broker(gw: Gateway, work: Path, host: str) -> StepCaBroker:
    """Build (cached) and start step-ca, then a broker process with backend=stepca on it."""
    out = StepCaBroker()
    try:
        out.binaries = await asyncio.to_thread(stepca.build_binaries)
    except stepca.StepCaUnavailable as exc:
        out.notes.append(f"step-ca unavailable: {exc}")
        return out
    out.ca = await asyncio.to_thread(stepca.init_ca, out.binaries, work / "stepca", host)
    await asyncio.to_thread(stepca.start, out.ca, out.binaries)
    secret: dict[str, str] = json.loads((gw.spec.state_dir / "secrets.json").read_text())
    env = stack.service_environment(gw.spec, secret, "ca_broker")
    port = stepca.free_port(host)
    prefix = "FED_CA_BROKER_"
    env.pop(f"{prefix}NGINX_PID_FILE", None)
    env.update(
        {
            f"{prefix}BIND_HOST": host,
            f"{prefix}BIND_PORT": str(port),
            f"{prefix}PKI_DIR": str(work / "stepca-broker-pki"),
            f"{prefix}BACKEND": "stepca",
            f"{prefix}STEPCA_URL": out.ca.ca_url,
            f"{prefix}STEPCA_ROOT_CERT_PATH": str(out.ca.root_path),
            f"{prefix}STEPCA_PROVISIONER_NAME": stepca.MAIN_PROVISIONER,
            f"{prefix}STEPCA_PROVISIONER_KEY_JSON": out.ca.provisioners[
                stepca.MAIN_PROVISIONER
            ].key_json,
        }
    )
    log = work / "stepca-broker.log"
    out.broker = spawn("ca_broker_stepca", [sys.executable, "-m", "ca_broker"], env, log)
    out.url = f"http://{host}:{port}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            try:
                if (await client.get(f"{out.url}/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not out.broker.is_alive() or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise RuntimeError(f"step-ca broker did not start:\n{tail}")
            await asyncio.sleep(0.2)
    return out


async def stepca_peer(
    admin: httpx.AsyncClient, user_id: uuid.UUID, scope: dict[str, Any]
) -> tuple[str, uuid.UUID, uuid.UUID]:
    # step-ca's template puts the peer name in a SAN; a dotted name is what a gateway uses.
    return await create_peer_and_grant(
        admin, user_id, scope, name=f"bench-{uuid.uuid4().hex[:8]}.federation.test"
    )
