"""Settings of the grants service (env prefix ``FED_GRANTS_``)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from fedcore.scope import ABSOLUTE_MAX_ROWS, RESOURCES, ScopePolicy
from fedcore.settings import ServiceSettings

MAX_ENROLLMENT_TOKEN_TTL = 900


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="FED_GRANTS_", env_nested_delimiter="__", extra="ignore"
    )
    # Seals connection keys (gateway secret); asks the broker to revoke (service token).
    needs_secrets = frozenset({"gateway_secret", "service_token"})

    bind_port: int = Field(default=9103, ge=1, le=65535)
    public_url: str = Field(default="https://127.0.0.1:8443", description="nginx public listener")
    ca_broker_url: str = Field(default="http://127.0.0.1:9101")
    ca_broker_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    ca_bundle_path: str = Field(
        default="",
        description=(
            "the gateway's published CA bundle (ca.pem); its root's SHA-256 is appended to "
            "enrollment URLs as #ca_fp=... so the peer can pin it. Empty: no pin in the URL"
        ),
    )
    max_rows_cap: int = Field(default=ABSOLUTE_MAX_ROWS, ge=1, le=ABSOLUTE_MAX_ROWS)
    hard_deny_resources: list[str] = Field(
        default_factory=lambda: ["credentials"],
        description="resources no scope may grant unless allow_hard_denied is true",
    )
    allow_hard_denied: bool = Field(
        default=False, description="explicit operator opt-in to grant hard-denied resources"
    )
    enrollment_token_ttl_default: int = Field(
        default=MAX_ENROLLMENT_TOKEN_TTL, ge=1, le=MAX_ENROLLMENT_TOKEN_TTL
    )
    # Outbound certificate renewal (grants.renewal).
    connection_renewal_interval_seconds: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="how often due connections are renewed; 0: never",
    )
    connection_renewal_fraction: float = Field(
        default=2 / 3, gt=0, lt=1, description="renew once this much of the lifetime has passed"
    )
    connection_renewal_timeout_seconds: float = Field(default=10.0, gt=0, le=60)

    @field_validator("hard_deny_resources")
    @classmethod
    def _known_resources(cls, values: list[str]) -> list[str]:
        unknown = sorted(set(values) - set(RESOURCES))
        if unknown:
            raise ValueError(f"unknown resources {unknown}; known: {list(RESOURCES)}")
        return values

    @field_validator("public_url")
    @classmethod
    def _https_origin(cls, value: str) -> str:
        # The enrollment URL carries a bearer token: it must never point at plain HTTP.
        if not value.startswith("https://"):
            raise ValueError("public_url must be an https:// URL")
        return value.rstrip("/")

    def scope_policy(self) -> ScopePolicy:
        return ScopePolicy(
            max_rows_cap=self.max_rows_cap,
            hard_deny=frozenset(self.hard_deny_resources),
            allow_hard_denied=self.allow_hard_denied,
        )
