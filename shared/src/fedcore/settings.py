"""Settings shared by every service.

Each service has one ``BaseSettings`` with its own env prefix (``FED_GRANTS_``, ...); the Postgres
and secrets sub-models are defined once here and read with ``__`` as the nested delimiter, e.g.
``FED_GRANTS_DB__URL`` or ``FED_VERBS_SECRETS__PROXY_SECRET``.

Secrets that look like placeholders are refused at start: a gateway that boots with
``changeme`` as its sealing key would seal every private key with a public value.

Each service is given only the shared secrets it uses (``ServiceSettings.needs_secrets``; the
launcher and the compose files follow it, docs/security.md): the public enrollment service, say,
holds neither the proxy secret (with which a process could pose as nginx and present a stolen,
public certificate to the verbs) nor the gateway secret (which unseals every connection key).
A service refuses to start without a secret it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedcore.secret_strength import MIN_SECRET_LENGTH, placeholder_verdict

if TYPE_CHECKING:
    from fedcore.sealing import Sealer

# A call made while holding row locks (the CA's signature during enrollment and renewal) must
# end this long before a revocation waiting for those locks gives up (lock_timeout_ms): the lock
# is also held for the checks before the call and the writes after it.
LOCK_HEADROOM_MS = 1_000


def refuse_call_outlasting_locks(deadline_seconds: float, lock_timeout_ms: int, field: str) -> None:
    """Settings check: a deadline for a call made under row locks that a revocation waits for
    must stay ``LOCK_HEADROOM_MS`` below the lock timeout."""
    if deadline_seconds * 1000 + LOCK_HEADROOM_MS > lock_timeout_ms:
        raise ValueError(
            f"{field} must stay at least 1 s below db.lock_timeout_ms (the call is made while "
            "holding row locks a revocation waits for)"
        )


def refuse_placeholder_secret(value: SecretStr, field_name: str) -> SecretStr:
    """Reject empty, short or obviously placeholder secrets (never echoing the value; the
    rules are in :mod:`fedcore.secret_strength`)."""
    verdict = placeholder_verdict(value.get_secret_value())
    if verdict == "short":
        raise ValueError(f"{field_name} must be at least {MIN_SECRET_LENGTH} characters")
    if verdict == "placeholder":
        raise ValueError(f"{field_name} looks like a placeholder; generate a random value")
    if verdict == "low_variety":
        raise ValueError(f"{field_name} has too little variety to be random")
    return value


class PostgresSettings(BaseModel):
    """Where the gateway's one Postgres database lives."""

    url: SecretStr = Field(description="SQLAlchemy URL, postgresql+psycopg://user:pw@host:port/db")
    pool_size: int = Field(default=10, ge=1, le=200)
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    lock_timeout_ms: int = Field(
        default=5_000, ge=100, le=600_000, description="give up waiting for a row lock after this"
    )
    statement_timeout_ms: int = Field(
        default=10_000, ge=100, le=600_000, description="server-side cap on any one statement"
    )
    startup_wait_seconds: float = Field(
        default=10.0, ge=0, le=300, description="How long a service waits for the DB at start"
    )

    @field_validator("url")
    @classmethod
    def _must_be_psycopg_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("postgresql+psycopg://"):
            raise ValueError("db url must start with postgresql+psycopg://")
        return value


SecretName = Literal["gateway_secret", "proxy_secret", "service_token"]
SECRET_NAMES: tuple[SecretName, ...] = ("gateway_secret", "proxy_secret", "service_token")


class MissingSecret(RuntimeError):
    """A secret the service did not declare in ``needs_secrets`` was asked for (a bug)."""


class SecretsSettings(BaseModel):
    """The shared secrets; a service is given those it uses. Each given one is validated
    against placeholders."""

    # A validation error must not quote the input: it is secrets.
    model_config = ConfigDict(hide_input_in_errors=True)

    gateway_secret: SecretStr | None = Field(
        default=None, description="Root secret; sealing keys are derived from it"
    )
    proxy_secret: SecretStr | None = Field(
        default=None, description="Header value nginx adds so the verbs trust what it forwards"
    )
    service_token: SecretStr | None = Field(
        default=None, description="Bearer token services present to the ca-broker"
    )
    previous_gateway_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="Older gateway secrets, kept only so blobs sealed with them can be re-sealed",
    )

    @field_validator("gateway_secret", "proxy_secret", "service_token")
    @classmethod
    def _no_placeholders(cls, value: SecretStr | None, info: object) -> SecretStr | None:
        if value is None:
            return None
        name = getattr(info, "field_name", "secret")
        return refuse_placeholder_secret(value, str(name))

    @field_validator("previous_gateway_secrets")
    @classmethod
    def _no_placeholder_in_previous(cls, values: list[SecretStr]) -> list[SecretStr]:
        for index, value in enumerate(values):
            refuse_placeholder_secret(value, f"previous_gateway_secrets[{index}]")
        return values

    def given(self) -> set[str]:
        """The names of the secrets given (``previous_gateway_secrets`` under its own)."""
        names: set[str] = {name for name in SECRET_NAMES if getattr(self, name) is not None}
        if self.previous_gateway_secrets:
            names.add("previous_gateway_secrets")
        return names

    def value(self, name: SecretName) -> str:
        """A secret the service declared it needs (present: checked at start)."""
        secret: SecretStr | None = getattr(self, name)
        if secret is None:
            raise MissingSecret(f"secrets.{name} is not configured for this service")
        return secret.get_secret_value()

    def sealer(self) -> Sealer:
        from fedcore.sealing import Sealer  # sealing imports this module's length rule

        return Sealer(
            self.value("gateway_secret"),
            [old.get_secret_value() for old in self.previous_gateway_secrets],
        )


class ServiceSettings(BaseSettings):
    """Base for every service's settings: where it binds, the DB and the secrets."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    bind_host: str = Field(default="127.0.0.1")
    bind_port: int = Field(default=8000, ge=1, le=65535)
    gateway_name: str = Field(default="gateway", min_length=1, max_length=63)
    log_level: str = Field(default="INFO")
    db: PostgresSettings
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)

    #: The shared secrets this service uses: it refuses to start without one of them, and
    #: reports (``unused_secrets``) any other it was given, which its deployment should not pass.
    needs_secrets: ClassVar[frozenset[SecretName]] = frozenset()

    @model_validator(mode="after")
    def _needed_secrets_present(self) -> Self:
        missing = sorted(self.needs_secrets - self.secrets.given())
        if missing:
            raise ValueError(
                "missing " + ", ".join(f"secrets.{name}" for name in missing) + " (required)"
            )
        if "gateway_secret" in self.needs_secrets:
            # The sealer checks the current and previous secrets together (length, one key id
            # each): a bad combination stops the service now, not its first sealing.
            self.secrets.sealer()
        return self

    def unused_secrets(self) -> list[str]:
        allowed: set[str] = set(self.needs_secrets)
        if "gateway_secret" in allowed:
            allowed.add("previous_gateway_secrets")
        return sorted(f"secrets.{name}" for name in self.secrets.given() - allowed)
