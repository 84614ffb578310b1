"""Calls made under row locks that a revocation waits for (the CA's signature during renewal
and enrollment) have deadlines the settings keep at least 1 s below the lock timeout
(docs/renewal.md, "A slow CA"; fedcore.settings.refuse_call_outlasting_locks)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.support.secrets import random_secret
from verbs.settings import Settings


def verbs_settings(**values: Any) -> Settings:
    db = {"url": "postgresql+psycopg://u:p@127.0.0.1:9/x", **values.pop("db", {})}
    return Settings.model_validate(
        {
            "db": db,
            "ca_bundle_path": "/nonexistent/client-ca.pem",
            "secrets": {
                name: random_secret()
                for name in ("gateway_secret", "proxy_secret", "service_token")
            },
            **values,
        }
    )


def test_the_default_renewal_deadline_is_below_the_default_lock_timeout() -> None:
    settings = verbs_settings()
    assert settings.renewal_sign_deadline_seconds * 1000 + 1000 <= settings.db.lock_timeout_ms


@pytest.mark.parametrize(
    ("deadline", "lock_timeout_ms"), [(5.0, 5_000), (6.0, 5_000), (4.5, 5_000), (2.0, 2_500)]
)
def test_a_renewal_deadline_at_or_above_the_lock_timeout_is_refused(
    deadline: float, lock_timeout_ms: int
) -> None:
    with pytest.raises(ValidationError) as refused:
        verbs_settings(
            renewal_sign_deadline_seconds=deadline, db={"lock_timeout_ms": lock_timeout_ms}
        )
    assert "renewal_sign_deadline_seconds must stay at least 1 s below db.lock_timeout_ms" in str(
        refused.value
    )


def test_a_renewal_deadline_below_the_lock_timeout_is_accepted() -> None:
    settings = verbs_settings(renewal_sign_deadline_seconds=4.0, db={"lock_timeout_ms": 5_000})
    assert settings.renewal_sign_deadline_seconds == 4.0


def test_the_enrollment_ca_deadline_is_checked_the_same_way() -> None:
    from enrollment.settings import Settings as EnrollmentSettings

    base = {
        "db": {"url": "postgresql+psycopg://u:p@127.0.0.1:9/x", "lock_timeout_ms": 5_000},
        "secrets": {"service_token": random_secret()},
    }
    assert EnrollmentSettings.model_validate(base).ca_deadline_seconds == 2.0
    with pytest.raises(ValidationError) as refused:
        EnrollmentSettings.model_validate({**base, "ca_deadline_seconds": 4.5})
    assert "ca_deadline_seconds must stay at least 1 s below db.lock_timeout_ms" in str(
        refused.value
    )
