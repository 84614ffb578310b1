"""The ca-broker app: CA material is loaded (or created) in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ca_broker.backends import SigningBackend
from ca_broker.backends.local import LocalBackend
from ca_broker.crl import CrlPublisher
from ca_broker.keystore import load_or_create_ca
from ca_broker.nginx_signal import reload_nginx
from ca_broker.pki_files import PkiFiles
from ca_broker.routes import router
from ca_broker.service import CaService
from ca_broker.settings import Settings
from fedcore import pki
from fedcore.appkit import create_service_app

log = logging.getLogger("ca_broker.app")


@dataclass(frozen=True)
class BrokerState:
    service: CaService
    files: PkiFiles
    hierarchy: pki.CaHierarchy


async def build_broker(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> BrokerState:
    """Load or create the CA, write the public files, build the backend and the CRL publisher."""
    hierarchy, _ = await load_or_create_ca(
        sessionmaker, settings.ca_sealer(), settings.gateway_name
    )
    directory = Path(settings.pki_dir)
    backend: SigningBackend
    crl: CrlPublisher | None = None
    if settings.backend == "stepca":
        from ca_broker.backends.stepca import StepCaBackend

        backend = await StepCaBackend.create(settings)
        # No CRL in this mode: a stale one left by the local backend would make nginx check
        # step-ca's certificates against the wrong issuer and refuse them all.
        (directory / "crl.pem").unlink(missing_ok=True)
        client_ca_pem = backend.bundle_pem() + backend.intermediates_pem()
        # Peers use ca.pem to authenticate *this gateway's* TLS server, which the local CA
        # certifies; adding step-ca's root would let any step-ca server certificate pass as us.
        bundle_pem = pki.cert_pem(hierarchy.root_cert) + pki.cert_pem(hierarchy.intermediate_cert)
    else:
        backend = LocalBackend(hierarchy)
        client_ca_pem = backend.bundle_pem() + backend.intermediates_pem()
        bundle_pem = pki.cert_pem(hierarchy.root_cert) + pki.cert_pem(hierarchy.intermediate_cert)
        crl = CrlPublisher(
            hierarchy,
            sessionmaker,
            directory / "crl.pem",
            timedelta(seconds=settings.crl_validity_seconds),
            Path(settings.nginx_pid_file) if settings.nginx_pid_file else None,
        )
    files = PkiFiles(directory=directory, bundle_pem=bundle_pem, client_ca_pem=client_ca_pem)
    files.write_bundles()
    files.ensure_server_certificate(hierarchy, settings.server_cert_hosts)
    if crl is not None:
        await crl.publish()
    roots = pki.load_pem_chain(backend.bundle_pem())
    service = CaService(
        backend=backend,
        roots=roots,
        default_ttl=timedelta(seconds=settings.default_ttl_seconds),
        max_ttl=timedelta(seconds=settings.max_ttl_seconds),
        crl=crl,
    )
    return BrokerState(service=service, files=files, hierarchy=hierarchy)


async def maintain(state: BrokerState, settings: Settings) -> None:
    """Keep the public files fresh while the broker runs: the CRL before it lapses, and nginx's
    server certificate before it expires (a broker up for months must not let either lapse)."""
    pid_file = Path(settings.nginx_pid_file) if settings.nginx_pid_file else None
    while True:
        await asyncio.sleep(settings.crl_check_interval_seconds)
        try:
            if state.service.crl is not None:
                await state.service.crl.refresh_if_needed()
            if state.files.ensure_server_certificate(state.hierarchy, settings.server_cert_hosts):
                log.info("server certificate renewed")
                reload_nginx(pid_file)
        except Exception as exc:  # keep going; the next tick retries
            log.error("maintenance failed", extra={"exception_type": type(exc).__name__})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # read from the environment

    async def on_startup(app: FastAPI) -> Callable[[], Awaitable[None]]:
        state = await build_broker(settings, app.state.sessionmaker)
        app.state.ca_service = state.service
        app.state.pki_files = state.files
        refresher = asyncio.create_task(maintain(state, settings))

        async def cleanup() -> None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await state.service.backend.aclose()

        return cleanup

    return create_service_app(
        title="mosaic-ca-broker", settings=settings, routers=[router], on_startup=on_startup
    )
