"""Request body of the local query API (``POST /api/local/v1/query/{resource}``)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from fedcore.scope import ABSOLUTE_MAX_ROWS
from verbs.schemas import VerbFilter

# "local", "all" or "federated:<connection name>" (connection names as `peer add` accepts them).
SOURCE_PATTERN = r"^(local|all|federated:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)$"


class LocalQueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(max_length=80, pattern=SOURCE_PATTERN)
    limit: int | None = Field(default=None, ge=1, le=ABSOLUTE_MAX_ROWS)
    filter: VerbFilter | None = None
    # Present: a full-text search (the peers' `search` verb); absent: a `list`.
    query: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    # Admin tokens only: the local user whose permissions the local rows follow.
    as_user: uuid.UUID | None = None
