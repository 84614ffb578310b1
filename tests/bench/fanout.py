"""Fan-out with a dead peer (issues 7 and 8): 1, 3 and 5 connections, one of them dead.

Set-up (untimed): a second gateway **B** started by the launcher next to the bench's gateway
**A**, seeded like A (its own rows) so B's local query answers a full page. B enrolls at A with
the real CLI (``mosaic federation peer add``, one grant of A's bench subject per connection, the
bench scope: 50 rows per query), as in ``tests/e2e/test_fanout.py``. The healthy connections all
point at A; each dead one is a real enrollment whose endpoint is then moved to a blackholed port
(accepts, never answers). Every size gets a dead connection of its own, so its first call meets
a circuit that has never seen the peer.

What is timed: ``POST /api/local/v1/query/tasks`` on B's admin listener (nginx, one kept-alive
client, admin token + ``as_user``: B's bench subject), ``limit`` 50. Per size N (the other
connections set ``revoked`` on B, test-only SQL as in the e2e suite):

1. **without the dead peer**: ``source: all`` over the N-1 healthy connections (a control: what
   the healthy sources cost on their own; it also warms their clients);
2. the dead connection is activated; **first call** (``source: all``, circuit closed): bounded by
   the per-source timeout (the client's connect timeout fires first);
3. calls until the dead source answers ``circuit_open`` (the breaker's threshold);
4. **steady state**: ``source: local`` and ``source: all`` alternating, ``calls`` of each:
   p50/p99 of the fan-out against the local-only query measured alongside it. Stops early
   (and says so) before the breaker's cool-down would let a probe through;
5. **CPU per call**: ``CPU_CALLS`` local-only calls, then as many fan-outs, each block read from
   ``/proc`` per process group of both gateways (Postgres, nginx, each service with its workers):
   where the fan-out's extra time goes on a box whose cores both gateways share. Blocks rather
   than per-call readings: ``/proc`` counts CPU in 10 ms ticks. Skipped (and said so) when the
   breaker's cool-down is too near.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack import stack
from tests.bench import seed
from tests.bench.memory import cpu_seconds
from tests.bench.report import Row
from tests.support.db import fetch_all
from tests.support.fanout import Blackhole, Enrolled, LocalApi, enroll_b_at_a, redirect_connection
from tests.support.net import host
from tests.support.stack import Gateway
from verbs.settings import Settings

SIZES = (1, 3, 5)
RESOURCE = "tasks"
ROW_LIMIT = 50
# What B's verbs run with: the launcher passes no FED_VERBS_FANOUT_* / *_TIMEOUT_* settings.
SOURCE_TIMEOUT_MS = float(Settings.model_fields["fanout_source_timeout_seconds"].default) * 1000
FIRST_CALL_SLACK_MS = 50.0
STEADY_SLACK_MS = 10.0
WARMUP_CALLS = 5
PROBE_MARGIN_SECONDS = 2.0  # stop sampling this long before an open circuit lets a probe out
CPU_CALLS = 200  # per block of the CPU accounting (step 5)


@dataclass
class Measured:
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


def stats(samples_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(samples_ms)
    return {
        "samples": len(ordered),
        "p50_ms": round(_percentile(ordered, 50), 2),
        "p99_ms": round(_percentile(ordered, 99), 2),
        "mean_ms": round(statistics.fmean(ordered), 2) if ordered else 0.0,
        "max_ms": round(ordered[-1], 2) if ordered else 0.0,
    }


def _code(answer: dict[str, Any], source: str) -> str | None:
    codes = [e["code"] for e in answer["errors"] if e["source"] == source]
    return codes[0] if codes else None


def _elapsed_ms(answer: dict[str, Any], source: str) -> float:
    return float(next(s["elapsed_ms"] for s in answer["sources"] if s["source"] == source))


class Bench:
    def __init__(self, b: Gateway, as_user: uuid.UUID) -> None:
        self.b = b
        self.api = LocalApi(b, b.admin_token)
        self.as_user = str(as_user)

    def close(self) -> None:
        self.api.close()

    def call(self, source: str) -> tuple[dict[str, Any], float]:
        answer, seconds = self.api.timed(
            RESOURCE, source=source, limit=ROW_LIMIT, as_user=self.as_user
        )
        return answer, seconds * 1000

    def activate(self, names: list[str]) -> None:
        """Exactly ``names`` active on B, every other connection revoked (test-only SQL)."""
        fetch_all(
            self.b.database_url,
            "UPDATE federation_connections SET state = CASE WHEN name = ANY(%s) "
            "THEN 'active'::connection_state ELSE 'revoked'::connection_state END RETURNING id",
            (names,),
        )

    def circuits(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.b.admin_url}/api/local/v1/circuits",
            headers={"Authorization": f"Bearer {self.b.admin_token}"},
            timeout=10,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def _healthy_errors(answer: dict[str, Any], dead_source: str | None) -> list[str]:
    return [
        f"{e['source']}:{e['code']}"
        for e in answer["errors"]
        if dead_source is None or e["source"] != dead_source
    ]


def process_groups(gateways: dict[str, Gateway]) -> dict[str, int]:
    """``{"a.verbs": pid, "b.postgres": pid, ...}``: each launched process of each gateway (its
    workers and backends are its children)."""
    return {
        f"{tag}.{name}": int(pid)
        for tag, gateway in gateways.items()
        for name, pid in gateway.reload_state()["pids"].items()
    }


def _cpu_ms_per_call(
    bench: Bench, groups: dict[str, int], source: str, calls: int
) -> dict[str, float]:
    before = {group: cpu_seconds(pid) for group, pid in groups.items()}
    for _ in range(calls):
        bench.call(source)
    after = {group: cpu_seconds(pid) for group, pid in groups.items()}
    return {group: (after[group] - before[group]) * 1000 / calls for group in groups}


def cpu_accounting(local: dict[str, float], fan_out: dict[str, float]) -> dict[str, Any]:
    """Per process group, CPU ms per call of each kind and what the fan-out adds; groups that
    spent nothing in either are left out."""
    busy = [g for g in local if local[g] > 0 or fan_out[g] > 0]
    return {
        "calls_per_block": CPU_CALLS,
        "local_only_ms": {g: round(local[g], 2) for g in busy},
        "fan_out_ms": {g: round(fan_out[g], 2) for g in busy},
        "fan_out_extra_ms": {g: round(fan_out[g] - local[g], 2) for g in busy},
        "local_only_total_ms": round(sum(local.values()), 2),
        "fan_out_total_ms": round(sum(fan_out.values()), 2),
    }


def _run_size(
    bench: Bench,
    count: int,
    healthy: list[str],
    dead: str,
    calls: int,
    notes: list[str],
    groups: dict[str, int],
) -> dict[str, Any]:
    dead_source = f"federated:{dead}"
    healthy_errors: Counter[str] = Counter()

    # 1. control: the same fan-out without the dead connection.
    bench.activate(healthy)
    for _ in range(WARMUP_CALLS):
        bench.call("all")
    control: list[float] = []
    for _ in range(calls):
        answer, ms = bench.call("all")
        assert len(answer["sources"]) == count, answer["sources"]
        healthy_errors.update(_healthy_errors(answer, None))
        control.append(ms)

    # 2. + 3. the dead connection joins: calls with the circuit closed until it opens.
    bench.activate([*healthy, dead])
    threshold = int(bench.circuits()["failure_threshold"])
    closed: list[dict[str, Any]] = []
    opened_at: float | None = None
    for _ in range(threshold + 2):
        answer, ms = bench.call("all")
        assert len(answer["sources"]) == count + 1, answer["sources"]
        code = _code(answer, dead_source)
        if code == "circuit_open":
            break
        healthy_errors.update(_healthy_errors(answer, dead_source))
        closed.append({"ms": round(ms, 1), "code": code})
        opened_at = time.monotonic()
    else:
        raise RuntimeError(f"fan-out {count}: the dead peer's circuit did not open: {closed}")
    circuits = bench.circuits()
    [state] = [c for c in circuits["items"] if c["name"] == dead]
    if state["state"] != "open":
        raise RuntimeError(f"fan-out {count}: dead circuit is {state['state']}")
    assert opened_at is not None
    probe_deadline = opened_at + float(circuits["cooldown_seconds"]) - PROBE_MARGIN_SECONDS

    # 4. steady state: local-only and fan-out alternating.
    for _ in range(WARMUP_CALLS):
        bench.call("local")
        bench.call("all")
    local: list[float] = []
    steady: list[float] = []
    dead_codes: Counter[str] = Counter()
    dead_elapsed: list[float] = []
    # Inside B (its own clock, per source): where a fan-out's time goes.
    local_only_source: list[float] = []  # the local source in the local-only query
    local_source: list[float] = []
    slowest_healthy: list[float] = []
    for _ in range(calls):
        if time.monotonic() > probe_deadline:
            notes.append(
                f"fan-out {count}: steady state stopped after {len(steady)} calls, before the "
                "breaker's cool-down would let a probe through"
            )
            break
        answer, ms = bench.call("local")
        assert [s["source"] for s in answer["sources"]] == ["local"], answer["sources"]
        assert not answer["errors"], answer["errors"]
        local.append(ms)
        local_only_source.append(_elapsed_ms(answer, "local"))
        answer, ms = bench.call("all")
        dead_codes[str(_code(answer, dead_source))] += 1
        dead_elapsed.append(_elapsed_ms(answer, dead_source))
        local_source.append(_elapsed_ms(answer, "local"))
        healthy_ms = [
            float(s["elapsed_ms"])
            for s in answer["sources"]
            if s["source"] not in ("local", dead_source)
        ]
        slowest_healthy.append(max(healthy_ms, default=0.0))
        healthy_errors.update(_healthy_errors(answer, dead_source))
        steady.append(ms)

    # 5. CPU per call, in blocks (the circuit still open: the same fan-out as step 4).
    cpu: dict[str, Any] | None = None
    block_seconds = CPU_CALLS * (statistics.median(local or [0]) + statistics.median(steady or [0]))
    block_seconds /= 1000
    if local and steady and time.monotonic() + 2 * block_seconds < probe_deadline:
        cpu = cpu_accounting(
            _cpu_ms_per_call(bench, groups, "local", CPU_CALLS),
            _cpu_ms_per_call(bench, groups, "all", CPU_CALLS),
        )
    else:
        notes.append(f"fan-out {count}: no CPU accounting (the breaker's cool-down was too near)")
    if healthy_errors:
        notes.append(f"fan-out {count}: healthy sources failed: {dict(healthy_errors)}")
    return {
        "connections": count,
        "dead": 1,
        "healthy": len(healthy),
        "first_call_ms": closed[0]["ms"],
        "first_call_code": closed[0]["code"],
        "closed_calls": closed,
        "circuit_open_after_calls": len(closed),
        "steady": {
            **stats(steady),
            "dead_codes": dict(dead_codes),
            "dead_source_elapsed_ms_max": max(dead_elapsed, default=0.0),
            "local_source_elapsed": stats(local_source),
            "slowest_healthy_source_elapsed": stats(slowest_healthy),
        },
        "local_only": {**stats(local), "local_source_elapsed": stats(local_only_source)},
        "without_dead": stats(control),
        "healthy_source_errors": dict(healthy_errors),
        "cpu": cpu,
    }


def measure(
    a: Gateway,
    a_subject: uuid.UUID,
    scope: dict[str, Any],
    root: Path,
    calls: int,
    rows_per_resource: int,
) -> Measured:
    out = Measured()
    started = time.perf_counter()
    # B: the next address after A's, its state folder beside A's (teardown finds both).
    spec = stack.gateway_specs(2, root, a.spec.host)[1]
    b = Gateway(spec, stack.up(spec))
    b_startup = time.perf_counter() - started
    world_b, _ = seed.seed(
        b.database_url,
        rows_per_resource=rows_per_resource,
        extra_grants=50,
        audit_rows=20_000,
        seed=9,
    )

    folder = root / "fanout"
    folder.mkdir(exist_ok=True)
    need = [("ok", i) for i in range(max(SIZES) - 1)] + [("dead", n) for n in SIZES]

    def enroll(item: tuple[str, int]) -> Enrolled:
        return enroll_b_at_a(a, b, a_subject, scope, folder, f"{item[0]}{item[1]}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        enrolled = list(pool.map(enroll, need))
    healthy = [e.name for (kind, _), e in zip(need, enrolled, strict=True) if kind == "ok"]
    dead = {n: e.name for (kind, n), e in zip(need, enrolled, strict=True) if kind == "dead"}

    hole = Blackhole(host(250))
    bench = Bench(b, world_b.subject)
    groups = process_groups({"a": a, "b": b})
    runs: dict[str, Any] = {}
    try:
        for name in dead.values():
            redirect_connection(b, name, hole.url)
        setup = time.perf_counter() - started
        print(
            f"  fan-out: gateway b up in {b_startup:.1f} s, {len(enrolled)} connections "
            f"enrolled at a (set-up {setup:.1f} s)",
            flush=True,
        )
        for count in SIZES:
            run = _run_size(
                bench, count, healthy[: count - 1], dead[count], calls, out.notes, groups
            )
            runs[str(count)] = run
            st, lo, ctl = run["steady"], run["local_only"], run["without_dead"]
            print(
                f"  fan-out {count} conn (1 dead): first call {run['first_call_ms']:.0f} ms "
                f"({run['first_call_code']}; timeout {SOURCE_TIMEOUT_MS:.0f} ms) | circuit open: "
                f"p50 {st['p50_ms']:.1f} p99 {st['p99_ms']:.1f} ms | local-only p50 "
                f"{lo['p50_ms']:.1f} p99 {lo['p99_ms']:.1f} ms | without the dead peer "
                f"p50 {ctl['p50_ms']:.1f} p99 {ctl['p99_ms']:.1f} ms",
                flush=True,
            )
            if run["cpu"]:
                extra = sorted(run["cpu"]["fan_out_extra_ms"].items(), key=lambda kv: -kv[1])
                print(
                    f"  fan-out {count} conn: CPU per call {run['cpu']['fan_out_total_ms']:.1f} ms "
                    f"(local-only {run['cpu']['local_only_total_ms']:.1f}); the fan-out adds "
                    + ", ".join(f"{g} {ms:.2f}" for g, ms in extra if ms >= 0.05),
                    flush=True,
                )
            _rows(out.rows, count, run)
    finally:
        bench.close()
        hole.close()
    out.results = {
        "per_source_timeout_ms": SOURCE_TIMEOUT_MS,
        "circuit": {k: v for k, v in bench.circuits().items() if k != "items"},
        "query": {"resource": RESOURCE, "limit": ROW_LIMIT, "as": "admin token + as_user"},
        "healthy_peer": "gateway a (one grant per connection)",
        "dead_peer": "blackholed port (accepts, never answers)",
        "calls": calls,
        "gateway_b_startup_seconds": round(b_startup, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
    }
    return out


def _rows(rows: list[Row], count: int, run: dict[str, Any]) -> None:
    label = f"fan-out {count} conn, 1 dead"
    st, lo, ctl = run["steady"], run["local_only"], run["without_dead"]
    rows.append(
        Row(f"{label}: first call (circuit closed)", run["first_call_ms"], "ms",
            SOURCE_TIMEOUT_MS, "per-source timeout")
    )  # fmt: skip
    rows.append(
        Row(f"{label} (circuit open): p50", st["p50_ms"], "ms", lo["p50_ms"],
            "local-only query p50")
    )  # fmt: skip
    rows.append(
        Row(f"{label} (circuit open): p99", st["p99_ms"], "ms", lo["p99_ms"],
            "local-only query p99")
    )  # fmt: skip
    rows.append(
        Row(f"{label} (circuit open): p50, dead peer's cost", st["p50_ms"], "ms",
            ctl["p50_ms"], "same fan-out without it p50")
    )  # fmt: skip
    cpu = run.get("cpu")
    if cpu:
        rows.append(
            Row(f"{label} (circuit open): CPU per call, both gateways",
                cpu["fan_out_total_ms"], "ms", cpu["local_only_total_ms"], "local-only query")
        )  # fmt: skip


def goals(results: dict[str, Any] | None) -> list[tuple[str, str]]:
    runs: dict[str, Any] = (results or {}).get("runs") or {}
    if not runs:
        return [
            ("fan-out with a dead peer: first call ≤ per-source timeout + 50 ms", "SKIP"),
            ("fan-out steady state ≤ local-only p99 + 10 ms (dead peer known dead)", "SKIP"),
        ]
    timeout = float((results or {})["per_source_timeout_ms"])
    lines: list[tuple[str, str]] = []
    for count, run in runs.items():
        first = float(run["first_call_ms"])
        lines.append(
            (f"fan-out with a dead peer, {count} conn: first call ≤ per-source timeout + 50 ms "
             f"(is {first:.0f} ms, bound {timeout + FIRST_CALL_SLACK_MS:.0f} ms)",
             "PASS" if first <= timeout + FIRST_CALL_SLACK_MS else "FAIL")
        )  # fmt: skip
    for count, run in runs.items():
        p99, local = float(run["steady"]["p99_ms"]), float(run["local_only"]["p99_ms"])
        lines.append(
            (f"fan-out steady state, {count} conn: p99 ≤ local-only p99 + 10 ms once the dead "
             f"peer is known dead (is {p99:.1f} ms, bound {local:.1f} + 10 ms)",
             "PASS" if p99 <= local + STEADY_SLACK_MS else "FAIL")
        )  # fmt: skip
    return lines
