"""A launcher-started gateway's services connect to Postgres as the application role
(fedcore.db_roles), never as the owner/superuser the migrations run as."""

from __future__ import annotations

import httpx

from fedcore.db_roles import DEFAULT_APP_ROLE
from tests.support.db import fetch_all
from tests.support.stack import Gateway


def test_every_service_connection_is_the_app_role_and_no_superuser(gateway_a: Gateway) -> None:
    # Make sure each service has a connection open: readiness asks the database.
    for service, url in gateway_a.state["service_urls"].items():
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200, service
    rows = fetch_all(
        gateway_a.database_url,
        "SELECT DISTINCT a.usename, r.rolsuper FROM pg_stat_activity a "
        "JOIN pg_roles r ON r.rolname = a.usename "
        "WHERE a.datname = current_database() AND a.backend_type = 'client backend' "
        "AND a.pid <> pg_backend_pid()",
    )
    assert rows == [(DEFAULT_APP_ROLE, False)]
