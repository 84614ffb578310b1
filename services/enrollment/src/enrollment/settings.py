"""Settings of the enrollment service (env prefix ``FED_ENROLLMENT_``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from fedcore.settings import ServiceSettings, refuse_call_outlasting_locks


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="FED_ENROLLMENT_", env_nested_delimiter="__", extra="ignore"
    )
    # Public and unauthenticated: it only asks the broker to sign (the service token).
    needs_secrets = frozenset({"service_token"})

    bind_port: int = Field(default=9102, ge=1, le=65535)
    ca_broker_url: str = Field(default="http://127.0.0.1:9101")
    public_url: str = Field(default="https://127.0.0.1:8443")
    ca_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    ca_deadline_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="an enrollment gives up on the CA after this (503 ca_unavailable); it holds "
        "the peer's and the grant's row locks meanwhile, and a revocation waits for them",
    )

    @model_validator(mode="after")
    def _enrollment_releases_its_locks_in_time(self) -> Settings:
        refuse_call_outlasting_locks(
            self.ca_deadline_seconds, self.db.lock_timeout_ms, "ca_deadline_seconds"
        )
        return self
