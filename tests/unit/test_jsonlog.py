"""The log scrubber is a second line of defence: secrets that slip into a log line are redacted."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fedcore.jsonlog import JsonFormatter, scrub, scrub_value

TOKEN = "ab" * 32
PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----"
JWS = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJwZWVyLWIifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"token {TOKEN}", TOKEN[8:]),
        (f"token_{TOKEN}", TOKEN[8:]),
        (f"key {PEM}", "MIGHAgEAMBMGByqGSM49"),
        (f"ott={JWS}", JWS),
        ("postgresql+psycopg://mosaic:s3cretpw@127.0.0.1:5432/db", "s3cretpw"),
        ("Authorization: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
        ('{"kty":"EC","d":"privatescalar","x":"1"}', "privatescalar"),
    ],
)
def test_scrub_redacts(text: str, secret: str) -> None:
    assert secret not in scrub(text)


def test_scrub_value_reaches_into_nested_extras_and_bytes() -> None:
    cleaned = scrub_value({"headers": {"auth": f"Bearer {TOKEN}"}, "raw": PEM.encode()})
    dumped = json.dumps(cleaned)
    assert TOKEN not in dumped
    assert "MIGHAgEAMBMGByqGSM49" not in dumped


def test_formatter_scrubs_message_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("test.jsonlog")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("got %s", TOKEN, extra={"nested": {"pem": PEM}, "n": 3})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert TOKEN not in stream.getvalue()
    assert "MIGHAgEAMBMGByqGSM49" not in stream.getvalue()
    assert line["msg"].startswith("got abababab")
    assert line["n"] == 3
    assert line["service"] == "test"
