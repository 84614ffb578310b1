"""The per-connection circuit breaker (a fake clock), the fan-out's merge order and when a
connection certificate is due for renewal."""

from __future__ import annotations

import uuid

from verbs.circuit import CircuitBreaker, CircuitBreakers, CircuitState
from verbs.fanout import SourceOutcome, merge


def state(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state  # a call: mypy must not narrow the attribute across the test


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_circuit_opens_after_n_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_seconds=30, clock=Clock())
    breaker.record_failure("peer_timeout")
    breaker.record_failure("peer_timeout")
    breaker.record_success()  # not consecutive any more
    breaker.record_failure("peer_timeout")
    breaker.record_failure("peer_timeout")
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.acquire()
    breaker.record_failure("peer_unreachable")
    assert state(breaker) is CircuitState.OPEN
    assert not breaker.acquire()
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["consecutive_failures"] == 3
    assert snapshot["last_failure_code"] == "peer_unreachable"
    assert snapshot["probe_after"] is not None


def test_after_the_cooldown_exactly_one_probe_goes_out() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_seconds=30, clock=clock)
    breaker.record_failure("peer_timeout")
    clock.now += 29.9
    assert not breaker.acquire()
    clock.now += 0.1
    assert breaker.acquire()  # the probe
    assert state(breaker) is CircuitState.HALF_OPEN
    assert not breaker.acquire()  # everyone else waits for the probe
    assert not breaker.acquire()


def test_a_failed_probe_reopens_for_a_new_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown_seconds=10, clock=clock)
    breaker.record_failure("x")
    breaker.record_failure("x")
    clock.now += 10
    assert breaker.acquire()
    breaker.record_failure("peer_timeout")  # one failure in half_open is enough
    assert state(breaker) is CircuitState.OPEN
    clock.now += 9
    assert not breaker.acquire()
    clock.now += 1
    assert breaker.acquire()


def test_a_successful_probe_closes_the_circuit() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_seconds=5, clock=clock)
    breaker.record_failure("x")
    clock.now += 5
    assert breaker.acquire()
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.acquire()
    assert breaker.acquire()


def test_a_released_probe_goes_back_without_changing_the_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown_seconds=5, clock=clock)
    breaker.record_failure("x")
    clock.now += 5
    assert breaker.acquire()
    breaker.release()
    assert state(breaker) is CircuitState.OPEN
    assert breaker.consecutive_failures == 1
    assert breaker.acquire()  # the next caller may probe at once


def test_breakers_are_per_connection_and_forgotten_with_it() -> None:
    breakers = CircuitBreakers(threshold=1, cooldown_seconds=5, clock=Clock())
    one, two = uuid.uuid4(), uuid.uuid4()
    breakers.get(one, "zeta").record_failure("peer_timeout")
    assert breakers.get(two, "alpha").acquire()
    assert not breakers.get(one, "zeta").acquire()
    assert [(b["name"], b["state"]) for b in breakers.snapshot()] == [
        ("alpha", "closed"),
        ("zeta", "open"),
    ]
    breakers.retain([two])
    assert [b["connection_id"] for b in breakers.snapshot()] == [two]


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
