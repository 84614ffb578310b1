"""``filter.updated_since`` needs an offset (verbs and local query API alike, as the admin API's
times): a bare time would be read in each database session's time zone, and the fan-out
forwards it to peers that would each read it in their own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from verbs.local_schemas import LocalQueryRequest
from verbs.schemas import ListRequest

Model = type[ListRequest | LocalQueryRequest]


def body(model: Model, since: str) -> str:
    source = '"source": "all", ' if model is LocalQueryRequest else ""
    return f'{{{source}"filter": {{"updated_since": "{since}"}}}}'


@pytest.mark.parametrize("model", [ListRequest, LocalQueryRequest])
def test_a_time_without_an_offset_is_refused(model: Model) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate_json(body(model, "2026-11-30T00:00:00"))
    [error] = refused.value.errors()
    assert error["loc"] == ("filter", "updated_since")
    assert error["type"] == "timezone_aware"


@pytest.mark.parametrize("model", [ListRequest, LocalQueryRequest])
def test_a_time_with_an_offset_is_kept_as_that_instant(
    model: Model,
) -> None:
    parsed = model.model_validate_json(body(model, "2026-11-30T02:00:00+02:00"))
    assert parsed.filter is not None
    since = parsed.filter.updated_since
    assert since == datetime(2026, 11, 30, tzinfo=UTC)
    assert since is not None
    assert since.utcoffset() == timedelta(hours=2)
    # What the fan-out forwards keeps the offset.
    assert parsed.filter.model_dump(mode="json")["updated_since"] == "2026-11-30T02:00:00+02:00"
