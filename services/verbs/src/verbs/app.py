"""The verbs service app: inbound verbs (mTLS via nginx, ``/api/federation/v1``) and the
outbound local query API with the fan-out (admin listener, ``/api/local/v1``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI

from fedcore.appkit import create_service_app
from fedcore.broker_client import CaBrokerClient
from fedcore.client_cert import ForwardedCertVerifier
from fedcore.db import connect_raw, create_raw_pool
from fedcore.federation_client import ClientTimeouts, FederationClientPool
from fedcore.runner import worker_app
from verbs.auth import InboundAuthenticator
from verbs.binding_cache import BindingCache
from verbs.circuit import CircuitBreakers, CircuitPolicy
from verbs.client_sweep import ClientSweeper
from verbs.fanout import FanOut
from verbs.local_routes import local_router
from verbs.local_service import LocalQueryService
from verbs.renewal import Renewer
from verbs.routes import router
from verbs.service import VerbService
from verbs.settings import Settings


def create_worker_app() -> FastAPI:
    """One worker's app when the verbs run several (``python -m verbs``)."""
    return worker_app("verbs", Settings, create_app)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # read from the environment

    async def on_startup(app: FastAPI) -> Callable[[], Awaitable[None]]:
        verifier = ForwardedCertVerifier.from_bundle_file(
            settings.ca_bundle_path, settings.cert_cache_size
        )
        bindings = None
        if settings.binding_cache_max_age_seconds > 0:
            bindings = BindingCache(
                lambda: connect_raw(settings.db),
                max_age_seconds=settings.binding_cache_max_age_seconds,
                size=settings.binding_cache_size,
            )
            bindings.start()
        authenticator = InboundAuthenticator(
            verifier, settings.secrets.value("proxy_secret"), bindings
        )
        # The inbound verbs' own pool of autocommit connections (verbs.reads); opened here,
        # connections are made in the background so a slow database does not block start.
        hot_pool = create_raw_pool(settings.db, name="verbs-inbound")
        await hot_pool.open()
        app.state.verb_service = VerbService(
            authenticator=authenticator,
            pool=hot_pool,
            policy=settings.scope_policy(),
            source_name=settings.source_name,
            sessionmaker=app.state.sessionmaker,
        )
        pool = FederationClientPool(
            settings.secrets.sealer(),
            timeouts=ClientTimeouts(
                connect=settings.peer_connect_timeout_seconds,
                read=settings.peer_read_timeout_seconds,
                write=settings.peer_read_timeout_seconds,
                pool=settings.peer_connect_timeout_seconds,
            ),
            max_response_bytes=settings.peer_max_response_bytes,
        )
        sweeper = ClientSweeper(pool, hot_pool, settings.client_sweep_seconds)
        sweeper.start()
        breakers = CircuitBreakers(
            hot_pool,
            CircuitPolicy(
                threshold=settings.circuit_failure_threshold,
                cooldown_seconds=settings.circuit_cooldown_seconds,
                # A probe outlives its source timeout only if its worker died mid-call.
                probe_timeout_seconds=settings.fanout_source_timeout_seconds + 5,
            ),
        )
        app.state.local_query_service = LocalQueryService(
            sessionmaker=app.state.sessionmaker,
            rows_pool=hot_pool,
            fanout=FanOut(pool, breakers, settings.fanout_source_timeout_seconds),
            pool=pool,
            source_name=settings.source_name,
            default_limit=settings.fanout_default_limit,
            max_limit=settings.max_rows_cap,
        )
        broker = CaBrokerClient(
            settings.ca_broker_url,
            settings.secrets.value("service_token"),
            timeout=settings.ca_broker_timeout_seconds,
        )
        app.state.renewer = Renewer(
            broker,
            settings.max_live_certificates_per_grant,
            sign_deadline_seconds=settings.renewal_sign_deadline_seconds,
        )

        async def cleanup() -> None:
            await sweeper.stop()
            if bindings is not None:
                await bindings.stop()
            await pool.aclose()
            await broker.aclose()
            await hot_pool.close()

        return cleanup

    return create_service_app(
        title="mosaic-verbs",
        settings=settings,
        routers=[router, local_router],
        on_startup=on_startup,
        # A trailing slash must not redirect a peer to a Host header it chose.
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
    )
