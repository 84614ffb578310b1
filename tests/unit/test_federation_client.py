"""fedcore.federation_client without a network: the TLS identity from a sealed key, the client
cache, the retry rule and the answer checks. The transport is ``httpx.MockTransport`` here (a
peer that misbehaves on demand cannot be a real gateway); real mTLS between two gateways is in
tests/e2e/test_fanout.py."""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from fedcore.federation_client import (
    ConnectionMaterial,
    ConnectionUnusable,
    FederationClient,
    FederationClientPool,
    PeerProtocolError,
    PeerRefused,
    PeerTimeout,
    PeerUnreachable,
    _is_retryable,
    build_ssl_context,
)
from fedcore.sealing import Sealer
from tests.support.factories import connection_material
from tests.support.secrets import random_secret

Handler = Callable[[httpx.Request], httpx.Response]


def _material(sealer: Sealer, endpoint: str = "https://peer.example:8443") -> ConnectionMaterial:
    return connection_material(sealer, endpoint)


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(random_secret())


def _identity_files() -> set[str]:
    names: set[str] = set()
    for folder in (Path("/dev/shm"), Path(tempfile.gettempdir())):
        if folder.is_dir():
            names |= {p.name for p in folder.glob(".mosaic-identity-*")}
    return names


@pytest.mark.parametrize("prefer_memory", [True, False])
def test_the_identity_loads_and_no_key_file_remains(sealer: Sealer, prefer_memory: bool) -> None:
    before = _identity_files()
    context = build_ssl_context(_material(sealer), sealer, prefer_memory=prefer_memory)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.hostname_checks_common_name is False
    assert context.verify_flags & ssl.VERIFY_X509_STRICT
    # Only the pinned bundle is trusted: one root, no system store.
    assert len(context.get_ca_certs()) == 1
    assert _identity_files() == before


def test_a_key_sealed_under_another_secret_makes_the_connection_unusable(sealer: Sealer) -> None:
    material = _material(Sealer(random_secret()))
    with pytest.raises(ConnectionUnusable) as info:
        build_ssl_context(material, sealer)
    assert info.value.code == "connection_unusable"
    assert "PRIVATE KEY" not in str(info.value)


def test_a_certificate_for_another_key_makes_the_connection_unusable(sealer: Sealer) -> None:
    material = _material(sealer)
    other = _material(sealer)
    mixed = ConnectionMaterial(
        **{**material.__dict__, "sealed_private_key": other.sealed_private_key}
    )
    with pytest.raises(ConnectionUnusable):
        build_ssl_context(mixed, sealer)


def test_a_row_without_certificate_is_unusable() -> None:
    row = {"id": uuid.uuid4(), "name": "x", "endpoint_url": "https://x", "cert_pem": None}
    with pytest.raises(ConnectionUnusable):
        ConnectionMaterial.from_row({**row, "ca_bundle_pem": None, "sealed_private_key": b""})


@pytest.mark.parametrize(
    "missing", ["endpoint_url", "cert_pem", "ca_bundle_pem", "sealed_private_key"]
)
@pytest.mark.parametrize("empty", [None, "empty"])
def test_each_missing_part_makes_a_row_unusable(missing: str, empty: str | None) -> None:
    row = {
        "id": uuid.uuid4(),
        "name": "x",
        "endpoint_url": "https://x:1/",
        "cert_pem": "C",
        "cert_chain_pem": None,
        "ca_bundle_pem": "CA",
        "sealed_private_key": b"k",
        "cert_serial": None,
    }
    material = ConnectionMaterial.from_row(row)
    assert material.cert_chain_pem == ""
    assert material.endpoint_url == "https://x:1"
    blank = None if empty is None else (b"" if missing == "sealed_private_key" else "")
    with pytest.raises(ConnectionUnusable):
        ConnectionMaterial.from_row({**row, missing: blank})


async def test_the_pool_reuses_a_client_until_the_material_changes(sealer: Sealer) -> None:
    pool = FederationClientPool(sealer, retire_after=0)
    material = _material(sealer)
    try:
        first = pool.client_for(material)
        assert pool.client_for(material) is first
        renewed = _material(sealer)  # a new certificate and key for the same connection
        renewed = ConnectionMaterial(**{**renewed.__dict__, "id": material.id})
        second = pool.client_for(renewed)
        assert second is not first
        moved = ConnectionMaterial(**{**renewed.__dict__, "endpoint_url": "https://other:1"})
        assert pool.client_for(moved) is not second
        assert len(pool) == 1
        pool.retain([])
        assert len(pool) == 0
    finally:
        await pool.aclose()


@pytest.mark.parametrize(
    ("field", "same"),
    [
        ("endpoint_url", False),
        ("cert_pem", False),
        ("cert_chain_pem", False),
        ("ca_bundle_pem", False),
        ("sealed_private_key", False),
        ("name", True),  # a renamed connection keeps its client (and its TLS connections)
        ("cert_serial", True),  # the certificate itself is compared
    ],
)
def test_a_client_is_reused_only_for_the_same_identity_and_target(
    sealer: Sealer, field: str, same: bool
) -> None:
    material = _material(sealer)
    value = getattr(material, field)
    changed = value + (b"x" if isinstance(value, bytes) else "x") if value else "x"
    other = ConnectionMaterial(**{**material.__dict__, field: changed})
    assert material.same_identity(other) is same
    assert material.same_identity(material)


async def test_the_pool_drops_one_connections_client(
    sealer: Sealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = FederationClientPool(sealer, retire_after=0)
    retired, kept = _material(sealer), _material(sealer)
    try:
        first = pool.client_for(retired)
        other = pool.client_for(kept)
        closed = asyncio.Event()

        async def record_close() -> None:
            closed.set()

        monkeypatch.setattr(first, "aclose", record_close)
        pool.drop(retired.id)
        pool.drop(uuid.uuid4())  # not cached: nothing to do
        assert len(pool) == 1
        async with asyncio.timeout(5):
            await closed.wait()  # closed after the grace period (0 here)
        assert pool.client_for(kept) is other
        assert pool.client_for(retired) is not first  # a new one, built from the row again
    finally:
        await pool.aclose()


def _client(sealer: Sealer, handler: Handler) -> FederationClient:
    return FederationClient(
        _material(sealer),
        ssl.create_default_context(),
        transport=httpx.MockTransport(handler),
        max_response_bytes=4096,
    )


async def test_connect_errors_are_retried_on_reads(sealer: Sealer) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"items": [], "next_cursor": None, "truncated": False})

    async with _client(sealer, handler) as client:
        page = await client.list("tasks")
    assert page.items == []
    assert calls == ["/api/federation/v1/list/tasks"] * 3


async def test_a_peer_that_stays_down_is_unreachable_after_three_attempts(sealer: Sealer) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    async with _client(sealer, handler) as client:
        with pytest.raises(PeerUnreachable) as info:
            await client.capabilities()
    assert info.value.code == "peer_unreachable"
    assert len(calls) == 3


async def test_timeouts_are_not_retried(sealer: Sealer) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadTimeout("slow", request=request)

    async with _client(sealer, handler) as client:
        with pytest.raises(PeerTimeout) as info:
            await client.search("tasks", "x")
    assert info.value.code == "peer_timeout"
    assert calls == [1]


def test_tls_failures_are_not_retried() -> None:
    tls = httpx.ConnectError("certificate verify failed")
    tls.__cause__ = ssl.SSLCertVerificationError("bad certificate")
    assert not _is_retryable(tls)
    assert _is_retryable(httpx.ConnectError("refused"))
    assert not _is_retryable(httpx.ReadTimeout("slow"))


async def test_a_refusal_carries_the_peers_code(sealer: Sealer) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "grant_revoked", "message": "the grant has been revoked"}}
        return httpx.Response(403, json=body)

    async with _client(sealer, handler) as client:
        with pytest.raises(PeerRefused) as info:
            await client.get("tasks", "../../admin")
    assert (info.value.status, info.value.code, info.value.peer_down) == (
        403,
        "grant_revoked",
        False,
    )


@pytest.mark.parametrize(
    ("status", "body", "code", "down"),
    [
        (502, b"<html>bad gateway</html>", "http_502", True),
        (403, json.dumps({"error": {"code": "Not A Code!"}}).encode(), "http_403", False),
        (
            504,
            json.dumps({"error": {"code": "upstream_timeout"}}).encode(),
            "upstream_timeout",
            True,
        ),
    ],
)
async def test_odd_error_answers_get_a_safe_code(
    sealer: Sealer, status: int, body: bytes, code: str, down: bool
) -> None:
    async with _client(sealer, lambda _: httpx.Response(status, content=body)) as client:
        with pytest.raises(PeerRefused) as info:
            await client.list("tasks")
    assert (info.value.code, info.value.peer_down) == (code, down)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"items": "x", "next_cursor": None, "truncated": False}).encode(),
        json.dumps({"items": [1], "next_cursor": None, "truncated": False}).encode(),
        json.dumps({"items": [], "next_cursor": 3, "truncated": False}).encode(),
    ],
)
async def test_a_page_that_does_not_parse_is_a_protocol_error(sealer: Sealer, body: bytes) -> None:
    async with _client(sealer, lambda _: httpx.Response(200, content=body)) as client:
        with pytest.raises(PeerProtocolError) as info:
            await client.list("tasks")
    assert info.value.code == "peer_invalid_response"


async def test_an_oversized_answer_is_cut_off(sealer: Sealer) -> None:
    huge = json.dumps({"items": [{"x": "y" * 10_000}], "next_cursor": None, "truncated": False})
    async with _client(sealer, lambda _: httpx.Response(200, content=huge.encode())) as client:
        with pytest.raises(PeerProtocolError) as info:
            await client.list("tasks")
    assert info.value.code == "peer_response_too_large"


async def test_path_segments_cannot_be_steered(sealer: Sealer) -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(200, json={"item": {"id": "x"}})

    async with _client(sealer, handler) as client:
        await client.get("tasks", "../../admin?x=1")
        with pytest.raises(ValueError, match="resource"):
            await client.list("../admin")
    assert seen == [b"/api/federation/v1/get/tasks/..%2F..%2Fadmin%3Fx%3D1"]
