"""Settings of the verbs service (env prefix ``FED_VERBS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from fedcore.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="FED_VERBS_", env_nested_delimiter="__", extra="ignore"
    )

    bind_port: int = Field(default=9104, ge=1, le=65535)
    ca_bundle_path: str = Field(default="", description="PEM bundle client certs must chain to")
