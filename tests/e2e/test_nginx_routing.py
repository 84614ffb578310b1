"""The nginx front of a launcher-started gateway: which listener reaches which service."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

from tests.support.net import host
from tests.support.stack import Gateway


def _public(gw: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gw.public_url, verify=gw.tls_context(), timeout=10)


def _admin(gw: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gw.admin_url, timeout=10)


@pytest.mark.parametrize("service", ["enrollment", "verbs"])
def test_public_listener_serves_readiness_of_public_services(
    gateway_a: Gateway, service: str
) -> None:
    with _public(gateway_a) as client:
        response = client.get(f"/readyz/{service}")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "service": f"mosaic-{service}"}


@pytest.mark.parametrize("service", ["grants", "verbs"])
def test_admin_listener_serves_readiness_of_admin_services(
    gateway_a: Gateway, service: str
) -> None:
    with _admin(gateway_a) as client:
        response = client.get(f"/readyz/{service}")
    assert response.status_code == 200
    assert response.json()["service"] == f"mosaic-{service}"


def test_public_tls_certificate_verifies_against_the_published_bundle(gateway_a: Gateway) -> None:
    with _public(gateway_a) as client:
        bundle = client.get("/pki/ca.pem")
    assert bundle.status_code == 200
    assert "BEGIN CERTIFICATE" in bundle.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/admin/federation/peers",
        "/api/admin/federation/grants",
        "/api/local/v1/query/tasks",
        "/readyz/grants",
        "/sign",
        "/revoke",
        "/readyz",
    ],
)
def test_admin_and_internal_routes_are_not_on_the_public_listener(
    gateway_a: Gateway, path: str
) -> None:
    with _public(gateway_a) as client:
        response = client.get(path)
        post = client.post(path, json={})
    for r in (response, post):
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/api/federation/v1/capabilities",
        "/api/federation/v1/enrollment/abc",
        "/pki/ca.pem",
        "/readyz/enrollment",
        "/sign",
    ],
)
def test_federation_routes_are_not_on_the_admin_listener(gateway_a: Gateway, path: str) -> None:
    with _admin(gateway_a) as client:
        response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_verbs_without_a_client_certificate_get_json_401_from_nginx(gateway_a: Gateway) -> None:
    with _public(gateway_a) as client:
        response = client.get("/api/federation/v1/capabilities")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "client_cert_required"


def test_ca_broker_answers_only_on_its_internal_address(gateway_a: Gateway) -> None:
    broker = gateway_a.service_url("ca_broker")
    assert httpx.get(f"{broker}/readyz", timeout=5).status_code == 200
    host = gateway_a.state["host"]
    assert host.startswith("127.")  # loopback only
    port = gateway_a.state["ports"]["ca_broker"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{gateway_b_host(gateway_a)}:{port}/readyz", timeout=2)


def gateway_b_host(gw: Gateway) -> str:
    """An address on which gateway a's broker does not listen (the next loopback address + 50)."""
    parts = gw.state["host"].rsplit(".", 1)
    return f"{parts[0]}.{int(parts[1]) + 50}"


def test_nginx_error_pages_are_json(gateway_a: Gateway) -> None:
    with _public(gateway_a) as client:
        too_big = client.post(
            "/api/federation/v1/enrollment/" + "a" * 64,
            content=b"x" * 200_000,
            headers={"content-type": "application/json"},
        )
        wrong_method = client.delete("/pki/ca.pem")
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert wrong_method.status_code == 403
    assert wrong_method.json()["error"]["code"] == "forbidden"


def test_access_log_redacts_the_enrollment_token(gateway_a: Gateway) -> None:
    token = "f" * 8 + "0123456789abcdef" * 3 + "deadbeefcafebabe"
    with _public(gateway_a) as client:
        client.post(f"/api/federation/v1/enrollment/{token}", json={"csr_pem": "x"})
        # percent-encoded path: still the enrollment location, still redacted
        client.post(f"/api/federation/v1/%65nrollment/{token}", json={"csr_pem": "x"})
        # answered by an error page (413, 403) or spelled oddly: the server-level log redacts
        client.post(
            f"/api/federation/v1/%65nrollment/{token}",
            content=b"x" * 200_000,
            headers={"content-type": "application/json"},
        )
        client.get(f"/api/federation/v1/%65nrollment/{token}")
        client.post(f"//api/federation/v1/enrollment/{token}", json={"csr_pem": "x"})
        client.post(f"/x/../api/federation/v1/enrollment/{token}", json={"csr_pem": "x"})
    logs = gateway_a.spec.log_dir / "nginx"
    text = "".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
    assert "/api/federation/v1/enrollment/ffffffff[redacted]" in text
    assert token not in text
    assert token[8:] not in text


@pytest.mark.parametrize(("path", "client_octet"), [("/readyz/verbs", 97), ("/pki/crl.pem", 96)])
async def test_public_probes_and_pki_files_are_rate_limited_per_client_ip(
    gateway_a: Gateway, path: str, client_octet: int
) -> None:
    """Unauthenticated GETs on the public listener reach the services (a readiness probe asks
    the database): a burst from one address gets JSON 429, another address is not slowed."""
    transport = httpx.AsyncHTTPTransport(
        verify=gateway_a.tls_context(), local_address=host(client_octet)
    )
    async with httpx.AsyncClient(
        base_url=gateway_a.public_url, transport=transport, timeout=30
    ) as client:
        responses = await asyncio.gather(*(client.get(path) for _ in range(150)))
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 429}, statuses
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "no request was rate limited"
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert limited[0].headers["retry-after"] == "1"
    with _public(gateway_a) as client:
        assert client.get(path).status_code == 200


def test_public_listener_issues_no_session_tickets(gateway_a: Gateway) -> None:
    """A resumed session would skip nginx's certificate and CRL check: no tickets (checked on
    TLS 1.2, where the client's session object says whether it holds one)."""
    context = gateway_a.tls_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(base_url=gateway_a.public_url, verify=context, timeout=10) as client:
        assert client.get("/readyz/enrollment").status_code == 200
        stream = client.get("/readyz/enrollment").extensions["network_stream"]
        session = stream.get_extra_info("ssl_object").session
    assert session is not None
    assert not session.has_ticket
