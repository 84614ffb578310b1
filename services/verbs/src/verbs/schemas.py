"""Request bodies of the verbs. Filters are a small typed allowlist: never raw SQL, never a
column name chosen by the peer."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fedcore.scope import ABSOLUTE_MAX_ROWS


class VerbFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["todo", "in_progress", "done"] | None = None
    # With an offset, as in the admin API: a bare time would be read in each database session's
    # time zone — and the fan-out forwards it, so every peer would read it in its own.
    updated_since: AwareDatetime | None = None


class ListRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(default=None, ge=1, le=ABSOLUTE_MAX_ROWS)
    cursor: str | None = Field(default=None, max_length=200)
    filter: VerbFilter | None = None


class SearchRequest(ListRequest):
    # No NUL: Postgres refuses it in text (a 500 otherwise).
    query: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")


class GetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csr_pem: str = Field(min_length=1, max_length=16_384)
