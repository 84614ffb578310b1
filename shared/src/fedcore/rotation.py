"""Re-sealing every sealed blob under the current secret (``mosaic secrets rotate``).

Rotation: start the services with the new secret and the old one in ``…PREVIOUS_…SECRETS`` (blobs
carry their key id, so both unseal), run this, then drop the old secret. Each table is re-sealed
in one transaction with its rows locked, so a concurrent writer never sees half a rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select, update
from sqlalchemy.sql.schema import Table

from fedcore.models import CaKeyPair, CaKeyRole, FederationConnection
from fedcore.sealing import (
    PURPOSE_CA_INTERMEDIATE_KEY,
    PURPOSE_CA_ROOT_KEY,
    PURPOSE_CONNECTION_KEY,
    Sealer,
)


@dataclass(frozen=True)
class RotationResult:
    resealed: int
    already_current: int


def _reseal_table(
    conn: Connection, table: Table, purpose_of: dict[object, str] | str, sealer: Sealer
) -> RotationResult:
    purpose_column = table.c.role if isinstance(purpose_of, dict) else None
    columns = [table.c.id, table.c.sealed_private_key]
    if purpose_column is not None:
        columns.append(purpose_column)
    rows = conn.execute(select(*columns).with_for_update()).all()
    resealed = current = 0
    for row in rows:
        blob = bytes(row[1])
        purpose = purpose_of[row[2]] if isinstance(purpose_of, dict) else purpose_of
        if not sealer.needs_reseal(blob):
            current += 1
            continue
        conn.execute(
            update(table)
            .where(table.c.id == row[0])
            .values(sealed_private_key=sealer.reseal(blob, purpose=purpose))
        )
        resealed += 1
    return RotationResult(resealed, current)


def reseal_connection_keys(conn: Connection, sealer: Sealer) -> RotationResult:
    table: Table = FederationConnection.__table__  # type: ignore[assignment]
    return _reseal_table(conn, table, PURPOSE_CONNECTION_KEY, sealer)


def reseal_ca_keys(conn: Connection, sealer: Sealer) -> RotationResult:
    table: Table = CaKeyPair.__table__  # type: ignore[assignment]
    purposes: dict[object, str] = {
        CaKeyRole.ROOT: PURPOSE_CA_ROOT_KEY,
        CaKeyRole.INTERMEDIATE: PURPOSE_CA_INTERMEDIATE_KEY,
    }
    return _reseal_table(conn, table, purposes, sealer)
