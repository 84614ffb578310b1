"""The verbs service app: inbound verbs (mTLS via nginx); the outbound local query API joins it
in the fan-out issue."""

from __future__ import annotations

from fastapi import FastAPI

from fedcore.appkit import create_service_app
from fedcore.client_cert import ForwardedCertVerifier
from verbs.auth import InboundAuthenticator
from verbs.routes import router
from verbs.service import VerbService
from verbs.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # read from the environment

    async def on_startup(app: FastAPI) -> None:
        verifier = ForwardedCertVerifier.from_bundle_file(
            settings.ca_bundle_path, settings.cert_cache_size
        )
        authenticator = InboundAuthenticator(
            verifier, settings.secrets.proxy_secret.get_secret_value()
        )
        app.state.verb_service = VerbService(
            authenticator=authenticator,
            sessionmaker=app.state.sessionmaker,
            policy=settings.scope_policy(),
            source_name=settings.source_name,
        )

    return create_service_app(
        title="mosaic-verbs",
        settings=settings,
        routers=[router],
        on_startup=on_startup,
        # A trailing slash must not redirect a peer to a Host header it chose.
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
    )
