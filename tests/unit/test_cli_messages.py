"""What the CLI tells a user who got something wrong: which field a 422 is about (table mode
too, without echoing the value), and an enrollment URL whose token was cut off."""

from __future__ import annotations

import pytest

from fedcore.cli.client import ApiError, ConfigError
from fedcore.cli.enroll import parse_enrollment_url
from fedcore.cli.output import print_error

TOKEN = "ab" * 32


def test_a_validation_error_names_its_fields_in_table_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = {
        "error": {
            "code": "validation_error",
            "message": "request body or parameters are invalid",
            "request_id": "r1",
            "fields": [
                {
                    "loc": ["body", "ttl_seconds"],
                    "msg": "Input should be less than or equal to 900",
                },
                {"loc": ["query", "limit"], "msg": "Input should be greater than or equal to 1"},
            ],
        }
    }
    message = "request body or parameters are invalid"
    print_error(ApiError(422, "validation_error", message, body), as_json=False)
    assert capsys.readouterr().err.splitlines() == [
        "error: validation_error: request body or parameters are invalid (request r1)",
        "  ttl_seconds: Input should be less than or equal to 900",
        "  query.limit: Input should be greater than or equal to 1",
    ]


def test_an_error_without_fields_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    body = {"error": {"code": "grant_not_found", "message": "no such grant"}}
    print_error(ApiError(404, "grant_not_found", "no such grant", body), as_json=False)
    assert capsys.readouterr().err == "error: grant_not_found: no such grant\n"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "https://a.example:8443/api/federation/v1/enrollment/abc",
            "the enrollment URL's token is malformed",
        ),
        (
            f"https://a.example:8443/api/federation/v1/enrollment/{TOKEN[:-1]}",
            "the enrollment URL's token is malformed",
        ),
        (f"https://a.example:8443/elsewhere/{TOKEN}", "has no /api/federation/v1/enrollment/"),
        (f"http://a.example:8443/api/federation/v1/enrollment/{TOKEN}", "must be an https URL"),
    ],
)
def test_a_bad_enrollment_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_enrollment_url(url)
    assert message in str(refused.value)


def test_a_good_enrollment_url_parses() -> None:
    parsed = parse_enrollment_url(
        f"https://a.example:8443/api/federation/v1/enrollment/{TOKEN}#ca_fp={'c' * 64}"
    )
    assert parsed.enroll_url == f"https://a.example:8443/api/federation/v1/enrollment/{TOKEN}"
    assert parsed.ca_fingerprint == "c" * 64
