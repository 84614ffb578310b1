"""Each service gets only the shared secrets it uses (docs/security.md, "Secrets per service"):
its settings refuse to start without them and name any other it was given; the native launcher
passes exactly those (the compose files are checked in tests/integration/test_compose_config.py).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from devstack import stack
from fedcore.settings import SECRET_NAMES, SecretsSettings, ServiceSettings
from tests.support.secrets import random_secret
from verbs.auth import InboundAuthenticator

DB_URL = "postgresql+psycopg://u:p@127.0.0.1:9/x"
REPO_ROOT = Path(__file__).resolve().parents[2]
NEEDS = {
    "enrollment": {"service_token"},
    "grants": {"gateway_secret", "service_token"},
    "verbs": {"gateway_secret", "proxy_secret", "service_token"},
    "ca_broker": {"service_token"},
}


def settings_class(service: str) -> type[ServiceSettings]:
    cls: type[ServiceSettings] = importlib.import_module(f"{service}.settings").Settings
    return cls


def build(service: str, secrets: set[str]) -> ServiceSettings:
    extra = {  # each service's other required settings
        "ca_broker": {"ca_key_secret": random_secret()},
        "verbs": {"ca_bundle_path": "/nonexistent/client-ca.pem"},
    }.get(service, {})
    return settings_class(service).model_validate(
        {
            "db": {"url": DB_URL},
            "secrets": {name: random_secret() for name in secrets},
            **extra,
        }
    )


@pytest.mark.parametrize("service", sorted(NEEDS))
def test_each_service_declares_what_it_uses_and_the_launcher_passes_exactly_that(
    service: str, tmp_path: Path
) -> None:
    assert settings_class(service).needs_secrets == NEEDS[service]
    assert set(stack.SERVICE_SECRETS[service]) == NEEDS[service]
    [spec] = stack.gateway_specs(1, tmp_path)
    secret = {
        name: random_secret()
        for name in (*SECRET_NAMES, "db_password", "app_db_password", "ca_key_secret")
    }
    env = stack.service_environment(spec, secret, service)
    prefix = stack.ENV_PREFIX[service]
    given = {k.removeprefix(f"{prefix}SECRETS__").lower() for k in env if "SECRETS__" in k}
    assert given == NEEDS[service]
    assert not {secret[name] for name in set(SECRET_NAMES) - NEEDS[service]} & set(env.values())


def test_every_service_is_in_the_matrix() -> None:
    services = {p.parent.name for p in REPO_ROOT.glob("services/*/src/*/settings.py")}
    assert services == set(NEEDS) == set(stack.SERVICE_SECRETS) == set(stack.ENV_PREFIX)


def test_the_launchers_own_secrets_do_not_leak_into_a_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = {
        "MOSAIC_GATEWAY_SECRET": random_secret(),
        "MOSAIC_ADMIN_TOKEN": random_secret(),
        "FED_ENROLLMENT_SECRETS__PROXY_SECRET": random_secret(),
    }
    for key, value in exported.items():
        monkeypatch.setenv(key, value)
    [spec] = stack.gateway_specs(1, tmp_path)
    secret = {
        name: random_secret()
        for name in (*SECRET_NAMES, "db_password", "app_db_password", "ca_key_secret")
    }
    env = stack.service_environment(spec, secret, "enrollment")
    assert not set(exported) & set(env)
    assert not set(exported.values()) & set(env.values())


def test_a_services_own_settings_pass_through_but_nothing_secret_bearing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FED_VERBS_FANOUT_SOURCE_TIMEOUT_SECONDS=5 make up`` configures the verbs (docs/setup.md);
    another service's settings, secrets, keys and the database URL never come from the caller."""
    passed = {
        "FED_VERBS_FANOUT_SOURCE_TIMEOUT_SECONDS": "5",
        "FED_VERBS_CIRCUIT_FAILURE_THRESHOLD": "7",
    }
    withheld = {
        "FED_VERBS_SECRETS__PROXY_SECRET": random_secret(),
        "FED_VERBS_DB__URL": "postgresql+psycopg://evil:x@127.0.0.1:1/x",
        "FED_VERBS_DB__LOCK_TIMEOUT_MS": "9000",  # DB__: the launcher owns the connection
        "FED_VERBS_SOME_TOKEN": random_secret(),
        "FED_VERBS_PROVISIONER_KEY_JSON": random_secret(),
        "FED_GRANTS_CA_BROKER_TIMEOUT_SECONDS": "9",  # another service's
    }
    for key, value in {**passed, **withheld}.items():
        monkeypatch.setenv(key, value)
    [spec] = stack.gateway_specs(1, tmp_path)
    secret = {
        name: random_secret()
        for name in (*SECRET_NAMES, "db_password", "app_db_password", "ca_key_secret")
    }
    env = stack.service_environment(spec, secret, "verbs")
    assert {key: env.get(key) for key in passed} == passed
    assert env["FED_VERBS_SECRETS__PROXY_SECRET"] == secret["proxy_secret"]  # the launcher's
    assert "evil" not in env["FED_VERBS_DB__URL"]
    for key in (
        "FED_VERBS_DB__LOCK_TIMEOUT_MS",
        "FED_VERBS_SOME_TOKEN",
        "FED_VERBS_PROVISIONER_KEY_JSON",
        "FED_GRANTS_CA_BROKER_TIMEOUT_SECONDS",
    ):
        assert key not in env
    # A setting the launcher sets itself wins over the caller's.
    monkeypatch.setenv("FED_VERBS_BIND_PORT", "1")
    assert stack.service_environment(spec, secret, "verbs")["FED_VERBS_BIND_PORT"] != "1"


@pytest.mark.parametrize("service", sorted(NEEDS))
def test_a_service_refuses_to_start_without_a_secret_it_uses(service: str) -> None:
    assert build(service, NEEDS[service]).unused_secrets() == []
    for missing in NEEDS[service]:
        with pytest.raises(ValidationError) as refused:
            build(service, NEEDS[service] - {missing})
        assert f"missing secrets.{missing} (required)" in str(refused.value)


@pytest.mark.parametrize("service", sorted(NEEDS))
def test_a_secret_a_service_does_not_use_is_named_as_unused(service: str) -> None:
    settings = build(service, set(SECRET_NAMES))
    assert settings.unused_secrets() == sorted(
        f"secrets.{name}" for name in set(SECRET_NAMES) - NEEDS[service]
    )


def test_asking_for_an_undeclared_secret_is_a_bug_not_an_empty_value() -> None:
    settings = build("enrollment", {"service_token"})
    with pytest.raises(RuntimeError, match=r"secrets\.proxy_secret is not configured"):
        settings.secrets.value("proxy_secret")


def test_previous_gateway_secrets_are_checked_at_load_where_they_are_used() -> None:
    with pytest.raises(ValidationError) as placeholder:
        SecretsSettings(previous_gateway_secrets=["changeme-" + random_secret()])
    assert "previous_gateway_secrets[0]" in str(placeholder.value)
    assert "changeme-" not in str(placeholder.value)
    current = random_secret()
    with pytest.raises(ValidationError) as short:
        build_with(
            "grants",
            {"gateway_secret": current, "service_token": random_secret()},
            previous=["x" * 20],
        )
    assert "changeme" not in str(short.value)
    assert "x" * 20 not in str(short.value)
    # Given to a service that does not use them: named as unused under their own name.
    settings = build_with("enrollment", {"service_token": random_secret()}, previous=[current])
    assert settings.unused_secrets() == ["secrets.previous_gateway_secrets"]


def test_a_refusal_never_quotes_the_input() -> None:
    secret = random_secret()
    with pytest.raises(ValidationError) as refused:
        build_with("verbs", {"gateway_secret": secret, "service_token": secret})
    assert "missing secrets.proxy_secret (required)" in str(refused.value)
    assert secret[-12:] not in str(refused.value)
    assert "127.0.0.1:9" not in str(refused.value)


def build_with(
    service: str, secrets: dict[str, str], previous: list[str] | None = None
) -> ServiceSettings:
    given: dict[str, object] = dict(secrets)
    if previous is not None:
        given["previous_gateway_secrets"] = previous
    extra = {
        "ca_broker": {"ca_key_secret": random_secret()},
        "verbs": {"ca_bundle_path": "/nonexistent/client-ca.pem"},
    }.get(service, {})
    return settings_class(service).model_validate(
        {"db": {"url": DB_URL}, "secrets": given, **extra}
    )


@pytest.mark.parametrize("proxy_secret", ["", "x" * 31])
def test_the_verbs_refuse_a_short_proxy_secret(proxy_secret: str) -> None:
    # An empty secret would match a request that carries no proxy header at all.
    with pytest.raises(ValueError, match="at least 32 characters") as refused:
        InboundAuthenticator(None, proxy_secret)  # type: ignore[arg-type]
    assert proxy_secret not in str(refused.value) or not proxy_secret
