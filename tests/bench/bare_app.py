"""The bench's *bare* endpoint: the physical limit the verbs are measured against.

Same framework and server settings as the verbs (FastAPI on uvicorn with uvloop + httptools
through ``fedcore.http_protocol``, as many worker processes as the verbs run:
``BENCH_BARE_WORKERS``), same nginx location rules in front (mTLS, identity headers, rate-limit
zone), and the same SQL the verbs send for the answer itself (``verbs.reads``'
``content_page_query`` / ``content_get_query``, imported) — but nothing else: no proxy-secret
check, no certificate re-verification, no grant/peer/membership read, no scope evaluation, no
audit row, no SQLAlchemy. Raw psycopg pool + orjson. Bench-only: never shipped in the services.

    python -m tests.bench.bare_app        (configured by BENCH_BARE_* environment variables)
"""

from __future__ import annotations

import gc
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from fedcore.http_protocol import CoalescingHttpToolsProtocol
from fedcore.scope_evaluator import RowFilter
from verbs.reads import ContentFilters, content_get_query, content_page_query

PREFIX = "/bench-bare"


def create_app(
    conninfo: str,
    user_id: uuid.UUID,
    team_ids: list[uuid.UUID],
    grant_id: uuid.UUID,
    source: str,
    limit: int,
    pool_size: int = 10,
) -> FastAPI:
    params: dict[str, Any] = {"grant": grant_id}
    # The row queries are the verbs' own (verbs.reads), as the verbs send them for this subject
    # and scope: the same text, the same plan.
    rows_filter = RowFilter(
        subject_user_id=user_id, include_personal=True, team_ids=frozenset(team_ids), limit=limit
    )
    list_sql, list_params = content_page_query("tasks", rows_filter, None, ContentFilters())
    search_sql, search_params = content_page_query(
        "tasks", rows_filter, None, ContentFilters(), search=""
    )
    capabilities_sql = "SELECT scope, expires_at FROM federation_grants WHERE id = %(grant)s"
    pool = AsyncConnectionPool(
        conninfo,
        min_size=pool_size,
        max_size=pool_size * 2,
        open=False,
        kwargs={"autocommit": True},
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        gc.freeze()  # as the services do after start (fedcore.appkit): the same runtime tuning
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    def answer(body: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    async def rows(sql: str, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, {**params, **(extra or {})})
            return await cur.fetchall()

    def page(found: list[dict[str, Any]]) -> Response:
        items = found[:limit]
        for item in items:
            item["_source"] = source
        truncated = len(found) > limit
        return answer({"items": items, "next_cursor": None, "truncated": truncated})

    @app.get(f"{PREFIX}/capabilities")
    async def capabilities() -> Response:
        found = await rows(capabilities_sql)
        scope = found[0]["scope"]
        return answer(
            {
                "resources": scope["resources"],
                "excluded_resources": scope["excluded_resources"],
                "max_rows_per_query": scope["max_rows_per_query"],
                "supported_verbs": ["capabilities", "list", "get", "search"],
                "grant_id": grant_id,
                "subject_user_id": user_id,
                "expires_at": found[0]["expires_at"],
            }
        )

    @app.post(f"{PREFIX}/list/tasks")
    async def list_tasks(request: Request) -> Response:
        body = await request.body()
        if body:
            orjson.loads(body)
        return page(await rows(list_sql, list_params))

    @app.post(f"{PREFIX}/search/tasks")
    async def search_tasks(request: Request) -> Response:
        query = orjson.loads(await request.body())["query"]
        return page(await rows(search_sql, {**search_params, "search": query}))

    @app.post(PREFIX + "/get/tasks/{row_id}")
    async def get_task(row_id: uuid.UUID) -> Response:
        found = await rows(*content_get_query("tasks", rows_filter, row_id))
        if not found:
            return answer({"error": {"code": "not_found"}}, 404)
        found[0]["_source"] = source
        return answer({"item": found[0]})

    @app.get(f"{PREFIX}/readyz")
    async def readyz() -> Response:
        await rows("SELECT 1 AS ok")
        return answer({"status": "ok"})

    return app


def app_from_env() -> FastAPI:
    env = os.environ
    return create_app(
        conninfo=env["BENCH_BARE_CONNINFO"],
        user_id=uuid.UUID(env["BENCH_BARE_USER_ID"]),
        team_ids=[uuid.UUID(t) for t in json.loads(env["BENCH_BARE_TEAM_IDS"])],
        grant_id=uuid.UUID(env["BENCH_BARE_GRANT_ID"]),
        source=env["BENCH_BARE_SOURCE"],
        limit=int(env["BENCH_BARE_LIMIT"]),
        pool_size=int(env.get("BENCH_BARE_POOL_SIZE", "10")),
    )


def main() -> None:
    env = os.environ
    workers = int(env.get("BENCH_BARE_WORKERS", "1"))
    uvicorn.run(
        "tests.bench.bare_app:app_from_env",
        factory=True,
        workers=workers if workers > 1 else None,
        host=env["BENCH_BARE_HOST"],
        port=int(env["BENCH_BARE_PORT"]),
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,  # as the services (fedcore.runner)
        ws="none",
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
