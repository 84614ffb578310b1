"""Fuzzing the verbs with hypothesis through the real app (in-process, real Postgres, a real CA
and a recorded certificate). nginx is stood in for by setting the headers it sets (the proxy
secret, X-Client-Verify, the escaped certificate): thousands of requests need the speed, and the
real nginx path is covered by the e2e and security suites. Whatever the body, path or cursor:
no 500, and no row outside the grant's scope."""

from __future__ import annotations

import string
import tempfile
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from fedcore import pki
from fedcore.dev_seed import SeededWorld, seed
from fedcore.models import FederationCertificate, GrantStatus, PeerState
from tests.support.apps import running
from tests.support.db import fetch_all
from tests.support.factories import create_grant_fixture
from tests.support.secrets import random_secret
from tests.support.test_pki import issue_client
from verbs.app import create_app
from verbs.settings import Settings

RESOURCES = ["tasks", "notes", "credentials", "teams", "users"]
VISIBLE_CLASSES = ("personal", "research-own", "research-other")


@dataclass
class Target:
    client: httpx.AsyncClient
    headers: dict[str, str]
    world: SeededWorld

    def visible(self, resource: str) -> set[str]:
        if resource in ("tasks", "notes"):
            return {str(i) for i in self.world.ids(resource, *VISIBLE_CLASSES)}
        if resource == "teams":
            return {str(self.world.teams["research"])}
        if resource == "users":
            return {str(self.world.users["alice"]), str(self.world.users["bob"])}
        return set()  # credentials: hard-denied


@pytest.fixture(scope="module")
async def target(test_postgres: Any) -> AsyncIterator[Target]:
    url = test_postgres.url(test_postgres.create_migrated_database())
    engine = create_async_engine(url)
    async with async_sessionmaker(engine)() as session:
        world = await seed(session)
        await session.commit()
    scope = {
        "resources": ["tasks", "notes", "teams", "users"],
        "include_teams": [str(world.teams["research"])],
        "include_personal": True,
        "max_rows_per_query": 4,
    }
    grant = await create_grant_fixture(
        url, status=GrantStatus.ACTIVE, scope=scope, user_id=world.users["alice"]
    )
    fetch_all(
        url,
        "UPDATE federation_peers SET state = %s WHERE id = %s RETURNING id",
        (PeerState.ACTIVE.value, grant.peer_id),
    )
    ca = pki.generate_ca_hierarchy("fuzz")
    identity = issue_client(
        ca, peer_id=grant.peer_id, grant_id=grant.grant_id, subject_user_id=grant.user_id
    )
    async with async_sessionmaker(engine)() as session:
        session.add(
            FederationCertificate(
                serial=pki.serial_hex(identity.cert),
                grant_id=grant.grant_id,
                peer_id=grant.peer_id,
                fingerprint_sha256=pki.fingerprint_sha256(identity.cert),
                subject_cn="fuzz",
                backend="local",
                not_before=identity.cert.not_valid_before_utc,
                not_after=identity.cert.not_valid_after_utc,
            )
        )
        await session.commit()
    await engine.dispose()
    bundle = Path(tempfile.mkdtemp(prefix="mosaic-fuzz-")) / "client-ca.pem"
    bundle.write_text(pki.cert_pem(ca.root_cert) + pki.cert_pem(ca.intermediate_cert))
    proxy_secret = random_secret()
    settings_ = Settings(
        db={"url": url},
        secrets={
            "gateway_secret": random_secret(),
            "proxy_secret": proxy_secret,
            "service_token": random_secret(),
        },
        ca_bundle_path=str(bundle),
        gateway_name="fuzzgw",
    )
    headers = {
        "X-Mosaic-Proxy-Secret": proxy_secret,
        "X-Client-Verify": "SUCCESS",
        "X-Client-Cert": urllib.parse.quote(pki.cert_pem(identity.cert)),
    }
    async with running(create_app(settings_)) as client:
        yield Target(client, headers, world)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
body_strategy = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "limit": st.one_of(st.integers(-5, 5000), json_value),
            "cursor": st.one_of(
                st.text(max_size=60), st.text(string.ascii_letters + "-_", max_size=24), json_value
            ),
            "query": st.one_of(st.text(min_size=1, max_size=80), json_value),
            "filter": st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "status": st.sampled_from(["todo", "done", "in_progress", "x", ""]),
                        "updated_since": st.one_of(
                            st.text(max_size=30), st.just("2020-01-01T00:00:00Z")
                        ),
                    },
                ),
                json_value,
            ),
        },
    ),
    json_value,
)
resource_strategy = st.one_of(
    st.sampled_from(RESOURCES), st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    verb=st.sampled_from(["list", "search", "get"]),
    resource=resource_strategy,
    body=body_strategy,
    row_id=st.one_of(st.uuids().map(str), st.text(max_size=40)),
)
async def test_no_500_and_no_row_outside_the_scope(
    target: Target, verb: str, resource: str, body: Any, row_id: str
) -> None:
    quoted = urllib.parse.quote(resource, safe="")
    path = f"/api/federation/v1/{verb}/{quoted}"
    if verb == "get":
        path += "/" + urllib.parse.quote(row_id, safe="")
    response = await target.client.post(path, json=body, headers=target.headers)
    assert response.status_code < 500, (path, body, response.text)
    payload = response.json()
    if response.status_code != 200:
        assert set(payload) == {"error"}
        return
    assert resource in RESOURCES
    rows = payload["items"] if verb != "get" else [payload["item"]]
    returned = {row["id"] for row in rows}
    assert returned <= target.visible(resource), (path, body)
    assert len(rows) <= 4


async def test_pagination_with_arbitrary_cursors_never_widens(target: Target) -> None:
    """A cursor is only a position: a forged one skips rows, it never reveals others."""
    for cursor_id in [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4()]:
        import base64

        cursor = base64.urlsafe_b64encode(cursor_id.bytes).decode().rstrip("=")
        response = await target.client.post(
            "/api/federation/v1/list/tasks", json={"cursor": cursor}, headers=target.headers
        )
        assert response.status_code == 200
        assert {r["id"] for r in response.json()["items"]} <= target.visible("tasks")
