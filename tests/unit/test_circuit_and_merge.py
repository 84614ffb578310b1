"""The per-connection circuit breaker's rules (given times; the shared store runs against
Postgres in tests/integration/test_circuit_store.py), the fan-out's merge order and when a
connection certificate is due for renewal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from verbs.circuit import CircuitPolicy, CircuitRecord, CircuitState
from verbs.fanout import SourceOutcome, merge

POLICY = CircuitPolicy(threshold=3, cooldown_seconds=30, probe_timeout_seconds=10)
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_no_row_or_no_opened_at_is_a_closed_circuit() -> None:
    assert CircuitRecord().state(T0, POLICY) is CircuitState.CLOSED
    assert CircuitRecord().clean
    counted = CircuitRecord(consecutive_failures=2, last_failure_code="peer_timeout")
    assert counted.state(T0, POLICY) is CircuitState.CLOSED
    assert not counted.clean  # a success must reset the count
    assert not counted.may_probe(T0, POLICY)


def test_an_open_circuit_lets_a_probe_claim_only_after_the_cooldown() -> None:
    record = CircuitRecord(3, "peer_unreachable", opened_at=T0)
    assert record.state(at(29.9), POLICY) is CircuitState.OPEN
    assert not record.may_probe(at(29.9), POLICY)
    assert record.may_probe(at(30), POLICY)
    snapshot = record.snapshot(at(1), POLICY)
    assert snapshot["state"] == "open"
    assert snapshot["consecutive_failures"] == 3
    assert snapshot["last_failure_code"] == "peer_unreachable"
    assert snapshot["probe_after"] == at(30)


def test_while_the_probe_is_out_nobody_else_may_probe_until_it_expires() -> None:
    record = CircuitRecord(3, "peer_timeout", opened_at=T0, probe_started_at=at(31))
    assert record.state(at(32), POLICY) is CircuitState.HALF_OPEN
    assert not record.may_probe(at(32), POLICY)
    assert record.snapshot(at(32), POLICY)["probe_after"] is None
    # A probe whose worker died stops counting after probe_timeout_seconds.
    assert record.state(at(41), POLICY) is CircuitState.OPEN
    assert record.may_probe(at(41), POLICY)


def test_a_probe_claim_older_than_the_opening_does_not_count() -> None:
    # The probe failed and re-opened the circuit: its claim belongs to the previous opening.
    record = CircuitRecord(4, "peer_timeout", opened_at=at(40), probe_started_at=at(31))
    assert record.state(at(41), POLICY) is CircuitState.OPEN
    assert not record.may_probe(at(41), POLICY)  # a new cool-down
    assert record.may_probe(at(70), POLICY)


def test_merge_keeps_source_order_and_reports_failures() -> None:
    outcomes = [
        SourceOutcome("local", items=[{"id": "l1"}, {"id": "l2"}]),
        SourceOutcome("federated:a", items=[{"id": "a1"}], truncated=True),
        SourceOutcome("federated:b", code="circuit_open"),
        SourceOutcome("federated:c", items=[{"id": "c1"}]),
    ]
    merged = merge(outcomes)
    assert [item["id"] for item in merged["items"]] == ["l1", "l2", "a1", "c1"]
    assert merged["errors"] == [{"source": "federated:b", "code": "circuit_open"}]
    assert merged["_partial"] is True
    assert [(s["source"], s["status"], s["count"]) for s in merged["sources"]] == [
        ("local", "ok", 2),
        ("federated:a", "ok", 1),
        ("federated:b", "error", 0),
        ("federated:c", "ok", 1),
    ]
    assert merge(outcomes[:2])["_partial"] is False


def test_renewal_is_due_at_two_thirds_of_the_lifetime() -> None:
    from datetime import timedelta

    from fedcore import pki
    from grants.renewal import renewal_due

    hierarchy = pki.generate_ca_hierarchy("t")
    _, cert = pki.issue_server_certificate(
        hierarchy.intermediate_key, hierarchy.intermediate_cert, ["x"], lifetime=timedelta(hours=24)
    )
    pem = pki.cert_pem(cert)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    two_thirds = start + (end - start) * 2 / 3
    assert not renewal_due(pem, two_thirds - timedelta(seconds=1), 2 / 3)
    assert renewal_due(pem, two_thirds, 2 / 3)
    assert renewal_due(pem, end + timedelta(hours=1), 2 / 3)
