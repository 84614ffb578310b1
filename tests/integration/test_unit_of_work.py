"""The unit of work commits before the response leaves, and rolls back on error."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from fedcore.appkit import create_service_app
from fedcore.db import SessionDep
from fedcore.errors import Conflict
from grants.settings import Settings
from tests.support.apps import running
from tests.support.db import execute, fetch_all
from tests.support.secrets import random_secret

router = APIRouter()


@router.post("/ok")
async def ok(session: SessionDep) -> dict[str, str]:
    await session.execute(text("INSERT INTO teams (id, name) VALUES (gen_random_uuid(), 'uow-ok')"))
    return {"status": "done"}


@router.post("/refused")
async def refused(session: SessionDep) -> dict[str, str]:
    await session.execute(
        text("INSERT INTO teams (id, name) VALUES (gen_random_uuid(), 'uow-refused')")
    )
    raise Conflict("no", code="refused_on_purpose")


@router.post("/commit-fails")
async def commit_fails(session: SessionDep) -> dict[str, str]:
    # The test database has a deferred constraint trigger that refuses this name at COMMIT.
    await session.execute(
        text("INSERT INTO teams (id, name) VALUES (gen_random_uuid(), 'fails-at-commit')")
    )
    return {"status": "the client must not see this"}


def _app(url: str) -> FastAPI:
    settings = Settings(
        db={"url": url},
        secrets={
            "gateway_secret": random_secret(),
            "proxy_secret": random_secret(),
            "service_token": random_secret(),
        },
    )
    return create_service_app(title="uow", settings=settings, routers=[router])


async def test_commit_on_success_rollback_on_domain_error(migrated_db_url: str) -> None:
    async with running(_app(migrated_db_url)) as client:
        assert (await client.post("/ok")).status_code == 200
        refused_response = await client.post("/refused")
    assert refused_response.status_code == 409
    assert refused_response.json()["error"]["code"] == "refused_on_purpose"
    names = {n for (n,) in fetch_all(migrated_db_url, "SELECT name FROM teams")}
    assert names == {"uow-ok"}


async def test_a_failed_commit_never_reaches_the_client_as_success(migrated_db_url: str) -> None:
    execute(
        migrated_db_url,
        """
        CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.name = 'fails-at-commit' THEN RAISE EXCEPTION 'refused at commit'; END IF;
          RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON teams
          DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();
        """,
    )
    app = _app(migrated_db_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://uow") as client:
            response = await client.post("/commit-fails")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert fetch_all(migrated_db_url, "SELECT name FROM teams") == []
