"""nginx overwrites every forwarded-identity header: what a client sends under those names never
reaches a service. Observed with a recording upstream behind the real nginx config template."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack import nginx
from devstack.processes import ProcessRecord, stop
from fedcore import pki
from tests.support.capture_upstream import CaptureUpstream
from tests.support.net import host
from tests.support.test_pki import ClientIdentity, issue_client, write_server_pki

HOST = host(41)
PUBLIC_PORT = 18443
ADMIN_PORT = 18080
PROXY_SECRET = "proxy-secret-for-this-test-run-7f3a9c1e5b"
FORGED = {
    "X-Client-Cert": "-----BEGIN%20CERTIFICATE-----forged",
    "X-Client-Verify": "SUCCESS",
    "X-Client-Serial": "01",
    "X-Mosaic-Proxy-Secret": "guessed-secret",
    "X-Request-Id": "client-chosen-id-123",
}


@dataclass
class FrontDoor:
    upstream: CaptureUpstream
    hierarchy: pki.CaHierarchy
    client: ClientIdentity
    workdir: Path
    tls: ssl.SSLContext

    def public(self, with_cert: bool = False) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.pem"))
        if with_cert:
            cert, key = self.client.write(self.workdir, "client")
            context.load_cert_chain(cert, key)
        return httpx.Client(base_url=f"https://{HOST}:{PUBLIC_PORT}", verify=context, timeout=5)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://{HOST}:{ADMIN_PORT}", timeout=5)


@pytest.fixture(scope="module")
def front_door() -> Iterator[FrontDoor]:
    workdir = Path(tempfile.mkdtemp(prefix="mosaic-test-nginx-"))
    workdir.chmod(0o755)
    hierarchy = pki.generate_ca_hierarchy("headers")
    files = write_server_pki(hierarchy, workdir / "pki", HOST)
    with CaptureUpstream(HOST) as upstream:
        values = {
            "NGINX_WORKER_PROCESSES": "1",
            "PUBLIC_LISTEN": f"{HOST}:{PUBLIC_PORT}",
            "ADMIN_LISTEN": f"{HOST}:{ADMIN_PORT}",
            "SERVER_CERT_PATH": str(files["server_cert"]),
            "SERVER_KEY_PATH": str(files["server_key"]),
            "CLIENT_CA_PATH": str(files["client_ca"]),
            "SSL_CRL_DIRECTIVE": "",
            "ENROLLMENT_UPSTREAM": upstream.address,
            "VERBS_UPSTREAM": upstream.address,
            "GRANTS_UPSTREAM": upstream.address,
            "CA_BROKER_UPSTREAM": upstream.address,
            "PROXY_SECRET": PROXY_SECRET,
            "ENROLLMENT_RATE": "100r/s",
            "ENROLLMENT_BURST": "100",
            "VERBS_RATE": "10r/s",
            "VERBS_BURST": "5",
            "PUBLIC_MAX_BODY": "64k",
            "ADMIN_MAX_BODY": "1m",
        }
        conf = nginx.write_config(workdir / "conf", workdir / "run", workdir / "logs", values)
        record: ProcessRecord = nginx.start(conf, workdir / "run")
        try:
            yield FrontDoor(
                upstream, hierarchy, issue_client(hierarchy), workdir, ssl.create_default_context()
            )
        finally:
            stop(record)
            shutil.rmtree(workdir, ignore_errors=True)


def _assert_nginx_identity(front: FrontDoor, expect_cert: bool, to_verbs: bool) -> None:
    seen = front.upstream.last()
    # The proxy secret goes only to the verbs; a client-sent value never passes.
    assert seen.values("X-Mosaic-Proxy-Secret") == ([PROXY_SECRET] if to_verbs else [])
    request_ids = seen.values("X-Request-Id")
    assert len(request_ids) == 1
    assert request_ids[0] != FORGED["X-Request-Id"]
    assert len(request_ids[0]) == 32
    verify = seen.values("X-Client-Verify")
    certs = seen.values("X-Client-Cert")
    if expect_cert:
        assert verify == ["SUCCESS"]
        assert len(certs) == 1
        forwarded = urllib.parse.unquote(certs[0])
        assert forwarded.strip() == pki.cert_pem(front.client.cert).strip()
        (serial,) = seen.values("X-Client-Serial")
        assert int(serial, 16) == front.client.cert.serial_number
    else:
        assert verify == ["NONE"]
        assert certs == []  # empty value: nginx sends no header at all, and not the client's
        assert seen.values("X-Client-Serial") == []


def test_public_request_without_cert_reaches_upstream_with_nginx_values_only(
    front_door: FrontDoor,
) -> None:
    with front_door.public() as client:
        response = client.get("/readyz/enrollment", headers=FORGED)
    assert response.status_code == 200
    _assert_nginx_identity(front_door, expect_cert=False, to_verbs=False)


def test_verbs_request_with_cert_carries_the_verified_cert_not_the_forged_one(
    front_door: FrontDoor,
) -> None:
    with front_door.public(with_cert=True) as client:
        response = client.post("/api/federation/v1/list/tasks", headers=FORGED, json={})
    assert response.status_code == 200
    _assert_nginx_identity(front_door, expect_cert=True, to_verbs=True)


def test_enrollment_request_cannot_smuggle_a_client_cert(front_door: FrontDoor) -> None:
    with front_door.public() as client:
        response = client.post(
            "/api/federation/v1/enrollment/" + "ab" * 32, headers=FORGED, json={"csr_pem": "x"}
        )
    assert response.status_code == 200
    _assert_nginx_identity(front_door, expect_cert=False, to_verbs=False)


def test_admin_listener_strips_forged_identity_headers(front_door: FrontDoor) -> None:
    with front_door.admin() as client:
        response = client.get("/api/admin/federation/peers", headers=FORGED)
    assert response.status_code == 200
    seen = front_door.upstream.last()
    assert seen.values("X-Client-Cert") == []
    assert seen.values("X-Client-Verify") == []  # plain HTTP: nginx's value is empty
    assert seen.values("X-Mosaic-Proxy-Secret") == []  # grants never sees the secret
    with front_door.admin() as client:
        local = client.post("/api/local/v1/query/tasks", headers=FORGED, json={})
    assert local.status_code == 200
    assert front_door.upstream.last().values("X-Mosaic-Proxy-Secret") == [PROXY_SECRET]


def test_underscore_variants_of_identity_headers_are_dropped(front_door: FrontDoor) -> None:
    with front_door.public() as client:
        response = client.get(
            "/readyz/verbs",
            headers={"X_Client_Cert": "forged", "X_Client_Verify": "SUCCESS"},
        )
    assert response.status_code == 200
    names = {k.lower() for k, _ in front_door.upstream.last().headers}
    assert "x_client_cert" not in names
    assert "x_client_verify" not in names


def test_cert_from_another_ca_is_refused_by_nginx_with_json_401(front_door: FrontDoor) -> None:
    stranger_ca = pki.generate_ca_hierarchy("stranger")
    stranger = issue_client(stranger_ca)
    cert, key = stranger.write(front_door.workdir, "stranger")
    context = ssl.create_default_context(cafile=str(front_door.workdir / "pki" / "ca.pem"))
    context.load_cert_chain(cert, key)
    before = len(front_door.upstream.requests)
    with httpx.Client(verify=context, timeout=5) as client:
        response = client.get(f"https://{HOST}:{PUBLIC_PORT}/api/federation/v1/capabilities")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_cert_invalid"
    assert len(front_door.upstream.requests) == before  # never reached a service


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    ],
    ids=["bad-request-line", "nul-in-path", "huge-header"],
)
def test_malformed_requests_get_the_json_envelope_too(front_door: FrontDoor, raw: bytes) -> None:
    context = ssl.create_default_context(cafile=str(front_door.workdir / "pki" / "ca.pem"))
    context.check_hostname = False
    with (
        socket.create_connection((HOST, PUBLIC_PORT), timeout=5) as plain,
        context.wrap_socket(plain, server_hostname=HOST) as tls,
    ):
        tls.sendall(raw)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400"), status_line
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "bad_request"


def test_verbs_are_rate_limited_per_client_certificate_with_json_429(
    front_door: FrontDoor,
) -> None:
    """limit_req keyed by the client certificate's serial (10 r/s, burst 5 here): one peer
    going faster gets JSON 429 with Retry-After; another peer's certificate is not slowed."""

    def run(identity: ClientIdentity, count: int) -> list[httpx.Response]:
        cert, key = identity.write(front_door.workdir, f"rl-{identity.cert.serial_number}")
        context = ssl.create_default_context(cafile=str(front_door.workdir / "pki" / "ca.pem"))
        context.load_cert_chain(cert, key)
        with httpx.Client(
            base_url=f"https://{HOST}:{PUBLIC_PORT}", verify=context, timeout=10
        ) as client:
            return [client.post("/api/federation/v1/list/tasks", json={}) for _ in range(count)]

    noisy = run(front_door.client, 40)  # one keep-alive connection, as fast as it goes
    limited = [r for r in noisy if r.status_code == 429]
    assert limited, "no request was rate limited"
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert limited[0].headers["retry-after"] == "1"
    quiet = run(issue_client(front_door.hierarchy, peer_name="quiet"), 5)
    assert [r.status_code for r in quiet] == [200] * 5
