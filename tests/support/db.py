"""Direct SQL for assertions: tests read what is really in the tables."""

from __future__ import annotations

from typing import Any

import psycopg


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def fetch_all(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def fetch_one(url: str, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    rows = fetch_all(url, sql, params)
    assert len(rows) == 1, rows
    return rows[0]


def execute(url: str, sql: str, params: tuple[Any, ...] | None = None) -> None:
    """Run statements that return no rows (DDL in tests; one statement when ``params``)."""
    with connect(url) as conn:
        if params is None:
            conn.execute(sql)  # simple protocol: several statements allowed
        else:
            conn.execute(sql, params)
