"""Settings of the verbs service (env prefix ``FED_VERBS_``)."""

from __future__ import annotations

import os

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from fedcore.scope import ABSOLUTE_MAX_ROWS, DEFAULT_HARD_DENY, ScopePolicy
from fedcore.settings import ServiceSettings, refuse_call_outlasting_locks


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="FED_VERBS_", env_nested_delimiter="__", extra="ignore"
    )
    # Checks nginx's proxy secret, unseals connection keys for the fan-out (gateway secret),
    # asks the broker to sign renewals (service token).
    needs_secrets = frozenset({"gateway_secret", "proxy_secret", "service_token"})

    bind_port: int = Field(default=9104, ge=1, le=65535)
    # The verbs are the hot path and CPU-bound in Python: one worker process per core this
    # process may run on (its CPU affinity; set it explicitly under a CPU quota), at most 8 by
    # default — each worker holds its own database connections (docs/operations.md).
    workers: int = Field(
        default_factory=lambda: min(len(os.sched_getaffinity(0)), 8),
        ge=1,
        le=64,
        description="uvicorn worker processes (default: one per available core, at most 8)",
    )
    ca_bundle_path: str = Field(
        min_length=1, description="PEM bundle (roots + intermediates) client certs must chain to"
    )
    public_name: str | None = Field(
        default=None, description="name rows are tagged with in _source (default: gateway_name)"
    )
    max_rows_cap: int = Field(default=ABSOLUTE_MAX_ROWS, ge=1, le=ABSOLUTE_MAX_ROWS)
    hard_deny_resources: list[str] = Field(default_factory=lambda: sorted(DEFAULT_HARD_DENY))
    allow_hard_denied: bool = False
    cert_cache_size: int = Field(default=4096, ge=1)
    # Certificate bindings (verbs.binding_cache): emptied by a database notification on every
    # change; this is the hard limit for a change whose notification was lost unseen. 0: off.
    binding_cache_max_age_seconds: float = Field(
        default=0.5,
        ge=0,
        le=1.0,
        description="longest a cached certificate binding is served (0 disables the cache)",
    )
    binding_cache_size: int = Field(default=4096, ge=1)

    # The outbound side: local query API and fan-out (docs/fanout.md).
    fanout_source_timeout_seconds: float = Field(
        default=2.5, gt=0, le=60, description="each source of a local query answers within this"
    )
    fanout_default_limit: int = Field(default=100, ge=1, le=ABSOLUTE_MAX_ROWS)
    peer_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    peer_read_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    peer_max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    circuit_failure_threshold: int = Field(
        default=3, ge=1, le=1000, description="consecutive failures that open a circuit"
    )
    client_sweep_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a retired connection's cached client (and key) leaves every worker within",
    )
    circuit_cooldown_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="an open circuit lets one probe through after"
    )

    # Renewal (POST /api/federation/v1/renew): the verbs ask the ca-broker to sign.
    ca_broker_url: str = Field(default="http://127.0.0.1:9101")
    ca_broker_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    renewal_sign_deadline_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="a renewal gives up on the CA after this (503 ca_unavailable); it holds the "
        "grant's row lock meanwhile, and a revocation waits for that lock",
    )
    max_live_certificates_per_grant: int = Field(
        default=3,
        ge=2,
        le=20,
        description="renewal refused while a grant has this many unexpired, unrevoked certificates",
    )

    @model_validator(mode="after")
    def _renewal_releases_the_grant_in_time(self) -> Settings:
        # A revocation waits for a renewal's locks at most lock_timeout_ms (the same default in
        # every service): a renewal must let go first, however slow the CA is, or a peer
        # renewing in a loop against a stalled CA could keep its grant from being revoked
        # (renewals never queue for the locks: repository.lock_for_renewal, NOWAIT).
        refuse_call_outlasting_locks(
            self.renewal_sign_deadline_seconds,
            self.db.lock_timeout_ms,
            "renewal_sign_deadline_seconds",
        )
        return self

    @property
    def source_name(self) -> str:
        return self.public_name or self.gateway_name

    def scope_policy(self) -> ScopePolicy:
        return ScopePolicy(
            max_rows_cap=self.max_rows_cap,
            hard_deny=frozenset(self.hard_deny_resources),
            allow_hard_denied=self.allow_hard_denied,
        )
