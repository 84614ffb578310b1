"""Settings of the ca-broker (env prefix ``FED_CA_BROKER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from fedcore.sealing import Sealer
from fedcore.settings import ServiceSettings, refuse_placeholder_secret

DAY = 86_400


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="FED_CA_BROKER_", env_nested_delimiter="__", extra="ignore"
    )
    # The broker checks the service token; its CA keys have a sealing secret of their own.
    needs_secrets = frozenset({"service_token"})

    bind_port: int = Field(default=9101, ge=1, le=65535)
    backend: Literal["local", "stepca"] = "local"
    # The CA keys are sealed with a secret only the broker has: the other services hold the
    # gateway secret (and face the internet), and must not be able to unseal the CA.
    ca_key_secret: SecretStr = Field(description="seals the local CA's private keys")
    previous_ca_key_secrets: list[SecretStr] = Field(default_factory=list)
    pki_dir: str = Field(default="./pki", description="where ca.pem, crl.pem, server.* are written")
    server_cert_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost"],
        description="SANs of nginx's public TLS certificate (local backend)",
    )
    default_ttl_seconds: int = Field(default=DAY, ge=60)
    max_ttl_seconds: int = Field(default=DAY, ge=60, le=30 * DAY)
    crl_validity_seconds: int = Field(default=DAY, ge=300, le=30 * DAY)
    crl_check_interval_seconds: float = Field(default=300.0, gt=0)
    nginx_pid_file: str | None = Field(
        default=None, description="if set, nginx is sent SIGHUP after the CRL file changes"
    )

    stepca_url: str | None = None
    stepca_root_cert_path: str | None = None
    stepca_provisioner_name: str | None = None
    stepca_provisioner_key_json: SecretStr | None = None
    stepca_provisioner_encrypted_key: SecretStr | None = None
    stepca_provisioner_password: SecretStr | None = None
    stepca_allow_renewal: bool = Field(
        default=False,
        description="accept a provisioner without disableRenewal (renewals bypass the broker)",
    )

    @field_validator("ca_key_secret")
    @classmethod
    def _no_placeholder(cls, value: SecretStr) -> SecretStr:
        return refuse_placeholder_secret(value, "ca_key_secret")

    def ca_sealer(self) -> Sealer:
        return Sealer(
            self.ca_key_secret.get_secret_value(),
            [old.get_secret_value() for old in self.previous_ca_key_secrets],
        )

    @model_validator(mode="after")
    def _check_backend(self) -> Settings:
        if self.default_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("default_ttl_seconds must not exceed max_ttl_seconds")
        if self.crl_check_interval_seconds > self.crl_validity_seconds / 4:
            # The CRL is rewritten at half its validity; checking less often than a quarter of
            # it could let it lapse, and an expired CRL makes nginx refuse every handshake.
            raise ValueError("crl_check_interval_seconds must be at most crl_validity_seconds / 4")
        if self.backend == "stepca":
            if not (
                self.stepca_url and self.stepca_root_cert_path and self.stepca_provisioner_name
            ):
                raise ValueError(
                    "backend=stepca needs stepca_url, stepca_root_cert_path and "
                    "stepca_provisioner_name"
                )
            has_json = self.stepca_provisioner_key_json is not None
            has_jwe = (
                self.stepca_provisioner_encrypted_key is not None
                and self.stepca_provisioner_password is not None
            )
            if not (has_json or has_jwe):
                raise ValueError(
                    "backend=stepca needs stepca_provisioner_key_json or "
                    "stepca_provisioner_encrypted_key + stepca_provisioner_password"
                )
        return self
