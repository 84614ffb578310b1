"""``make bench`` / ``python -m tests.bench``: one gateway started by the launcher on the bench's
own loopback /24, a realistic data set, and every measurement next to a baseline measured in the
same run. Prints a table (with the issue's goal lines, PASS/FAIL — informative, exit 0) and
writes ``bench/results.json``.

Options (environment): BENCH_SECONDS (per load run, default 10), BENCH_CONNECTIONS (default 32),
BENCH_TRIALS (revocation, default 20), BENCH_FANOUT_CALLS (fan-out steady-state calls per series,
default 500), BENCH_KEEP=1 (leave the state folder), MOSAIC_TEST_NET.
``--profile`` also records the verbs process with py-spy during a list load
(``uv run --with py-spy python -m tests.bench --profile``). ``--quick`` shortens everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from devstack import stack
from devstack.processes import ProcessRecord, spawn, stop
from tests.bench import fanout, issuance, memory, nginx_variant, profile, pyload, revocation, seed
from tests.bench.peers import BenchPeer, admin_client, create_peer_and_grant, enrolled_peer
from tests.bench.report import Row, render_table
from tests.bench.wrk import LoadResult, Request, Wrk, build_shim, ensure_wrk
from tests.support.net import host, test_net
from tests.support.stack import Gateway
from tests.support.stepca import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "bench" / "results.json"
VERBS = "/api/federation/v1"
BARE = "/bench-bare"
ROW_LIMIT = 50


@dataclass
class Config:
    seconds: float = 10.0
    warmup: float = 2.0
    connections: int = 32
    trials: int = 20
    rows_per_resource: int = 20_000
    signatures: int = 200
    stepca_signatures: int = 100
    enrollments: int = 60
    concurrency: int = 8
    fanout_calls: int = 500  # p99 of 500 = the 6th largest: one hiccup does not decide it
    list_rounds: int = 3  # bare/verbs pairs for the goal's `list` line (median reported)
    profile: bool = False
    keep: bool = False
    # Sections to run (default all): "verbs", "revocation", "issuance", "fanout".
    only: frozenset[str] = frozenset()

    def runs(self, section: str) -> bool:
        return not self.only or section in self.only

    @classmethod
    def from_env(cls, quick: bool, with_profile: bool) -> Config:
        cfg = cls()
        if quick:
            cfg = cls(seconds=3, warmup=1, trials=5, rows_per_resource=10_000, signatures=60,
                      stepca_signatures=30, enrollments=20, fanout_calls=60,
                      list_rounds=1)  # fmt: skip
        cfg.seconds = float(os.environ.get("BENCH_SECONDS", cfg.seconds))
        cfg.connections = int(os.environ.get("BENCH_CONNECTIONS", cfg.connections))
        cfg.trials = int(os.environ.get("BENCH_TRIALS", cfg.trials))
        cfg.fanout_calls = int(os.environ.get("BENCH_FANOUT_CALLS", cfg.fanout_calls))
        cfg.keep = os.environ.get("BENCH_KEEP") == "1"
        cfg.profile = with_profile
        return cfg


SECTIONS = ("verbs", "revocation", "issuance", "fanout")


@dataclass
class Run:
    cfg: Config
    root: Path
    gw: Gateway | None = None
    bare: ProcessRecord | None = None
    stepca: issuance.StepCaBroker | None = None
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# machine


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gib = round(kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass

    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if done.stdout + done.stderr
            else "?"
        )

    from devstack.nginx import nginx_binary
    from devstack.postgres import _pg_bin

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": version([nginx_binary(), "-v"]),
        "postgres": version([_pg_bin("postgres"), "--version"]),
        "wrk": version(["wrk", "-v"]) if shutil.which("wrk") else "not installed",
    }


# --------------------------------------------------------------------------------------------
# setup


def bench_scope(world: seed.BenchWorld) -> dict[str, Any]:
    return {
        "resources": ["tasks", "notes", "teams", "users"],
        "excluded_resources": [],
        "include_teams": [str(t) for t in world.subject_scope_teams],
        "include_personal": True,
        "max_rows_per_query": ROW_LIMIT,
    }


def verbs_workers() -> int:
    """The verbs' worker count in this run (MOSAIC_VERBS_WORKERS, passed on by the launcher, or
    their default: one per available core)."""
    return int(os.environ.get("MOSAIC_VERBS_WORKERS") or len(os.sched_getaffinity(0)))


def start_bare(run: Run, world: seed.BenchWorld, peer: BenchPeer) -> str:
    assert run.gw is not None
    bare_host = run.gw.spec.host
    port = free_port(bare_host)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FED_")},
        "BENCH_BARE_CONNINFO": seed.conninfo(run.gw.database_url),
        "BENCH_BARE_USER_ID": str(world.subject),
        "BENCH_BARE_TEAM_IDS": json.dumps([str(t) for t in world.subject_scope_teams]),
        "BENCH_BARE_GRANT_ID": str(peer.grant_id),
        "BENCH_BARE_SOURCE": run.gw.name,
        "BENCH_BARE_LIMIT": str(ROW_LIMIT),
        "BENCH_BARE_HOST": bare_host,
        "BENCH_BARE_PORT": str(port),
        # As many worker processes as the verbs run (their default: one per available core).
        "BENCH_BARE_WORKERS": str(verbs_workers()),
        "PYTHONUNBUFFERED": "1",
    }
    run.bare = spawn(
        "bench_bare",
        [sys.executable, "-m", "tests.bench.bare_app"],
        env,
        run.root / "bench-bare.log",
        cwd=REPO_ROOT,
    )
    url = f"http://{bare_host}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}{BARE}/readyz", timeout=2).status_code == 200:
                return f"{bare_host}:{port}"
        except httpx.HTTPError:
            pass
        if not run.bare.is_alive() or time.monotonic() > deadline:
            log = (run.root / "bench-bare.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"bare endpoint did not start:\n{log}")
        time.sleep(0.1)


def visible_task_ids(database_url: str, world: seed.BenchWorld, count: int) -> list[uuid.UUID]:
    teams = world.subject_scope_teams
    with psycopg.connect(seed.conninfo(database_url)) as conn:
        rows = conn.execute(
            "SELECT id FROM tasks WHERE (owner_user_id = %s AND team_id IS NULL) "
            "OR team_id = ANY(%s) ORDER BY md5(id::text) LIMIT %s",
            (world.subject, teams, count),
        ).fetchall()
    return [r[0] for r in rows]


def requests_for(ids: list[uuid.UUID]) -> dict[str, tuple[Request, Request]]:
    """verb → (verbs request, bare request): the same question to both."""
    list_body = json.dumps({"limit": ROW_LIMIT})
    search_body = json.dumps({"query": seed.SEARCH_WORD, "limit": ROW_LIMIT})
    return {
        "list": (
            Request("POST", (f"{VERBS}/list/tasks",), list_body),
            Request("POST", (f"{BARE}/list/tasks",), list_body),
        ),
        "get": (
            Request("POST", tuple(f"{VERBS}/get/tasks/{i}" for i in ids)),
            Request("POST", tuple(f"{BARE}/get/tasks/{i}" for i in ids)),
        ),
        "search": (
            Request("POST", (f"{VERBS}/search/tasks",), search_body),
            Request("POST", (f"{BARE}/search/tasks",), search_body),
        ),
        "capabilities": (
            Request("GET", (f"{VERBS}/capabilities",)),
            Request("GET", (f"{BARE}/capabilities",)),
        ),
    }


def preflight(gw: Gateway, peer: BenchPeer, pairs: dict[str, tuple[Request, Request]]) -> None:
    """Both sides answer 200 and — for list/search/get — the very same rows."""
    with httpx.Client(base_url=gw.public_url, verify=peer.ssl_context(gw), timeout=10) as client:
        for verb, (ours, bare) in pairs.items():
            answers = []
            for request in (ours, bare):
                response = client.request(
                    request.method,
                    request.paths[0],
                    content=request.body,
                    headers={"content-type": "application/json"} if request.body else {},
                )
                if response.status_code != 200:
                    raise RuntimeError(
                        f"{verb} {request.paths[0]}: {response.status_code} {response.text[:300]}"
                    )
                answers.append(response.json())
            if verb in ("list", "search"):
                ids = [[item["id"] for item in a["items"]] for a in answers]
                if ids[0] != ids[1] or len(ids[0]) != ROW_LIMIT:
                    raise RuntimeError(f"{verb}: verbs and bare disagree ({len(ids[0])} rows)")
            if verb == "get" and answers[0]["item"]["id"] != answers[1]["item"]["id"]:
                raise RuntimeError("get: verbs and bare disagree")


# --------------------------------------------------------------------------------------------
# measurements


class Load:
    def __init__(self, run: Run, peer: BenchPeer) -> None:
        assert run.gw is not None
        self.run = run
        self.gw = run.gw
        self.peer = peer
        self.wrk: Wrk | None = None
        binary = ensure_wrk()
        if binary is not None:
            try:
                shim = build_shim(run.root)
                self.wrk = Wrk(binary, shim, peer.cert_path, peer.key_path, run.root)
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                run.notes.append(f"wrk shim unavailable ({exc}); Python load generator used")
        else:
            run.notes.append("wrk unavailable; Python load generator used (see its ceiling)")
        self.tool = "wrk (LD_PRELOAD mTLS shim)" if self.wrk else "python httpx (asyncio)"

    def __call__(self, request: Request, seconds: float) -> LoadResult:
        cfg = self.run.cfg
        if self.wrk is not None:
            return self.wrk.run(self.gw.public_url, request, seconds, cfg.connections)
        return pyload.run(
            self.gw.public_url, request, seconds, cfg.connections, self.peer.ssl_context(self.gw)
        )


def compare_verbs(
    run: Run, load: Load, pairs: dict[str, tuple[Request, Request]], pids: dict[str, int]
) -> None:
    """Each verb against the bare endpoint; also the CPU each side's process spent per request
    (steadier than rps when other work shares the box)."""
    cfg = run.cfg

    def measured(request: Request, pid: int) -> tuple[LoadResult, float, dict[str, float]]:
        """The load's result, the app's CPU per request, and everyone's (ms per request)."""
        who = {"app": pid, "postgres": pids["postgres"], "nginx": pids["nginx"]}
        before = {name: memory.cpu_seconds(p) for name, p in who.items()}
        machine_before = memory.machine_busy_seconds()
        result = load(request, cfg.seconds)
        spent = {name: memory.cpu_seconds(p) - before[name] for name, p in who.items()}
        spent["machine"] = memory.machine_busy_seconds() - machine_before
        per_request = {
            name: round(value * 1000 / result.requests, 3) if result.requests else 0.0
            for name, value in spent.items()
        }
        return result, per_request["app"], per_request

    out: dict[str, Any] = {}
    for verb, (ours, bare) in pairs.items():
        load(bare, cfg.warmup)
        load(ours, cfg.warmup)
        # The goal's verb gets several alternating bare/verbs pairs and the median pair (by rps
        # ratio) is reported: on a shared box one pair can land in a burst of other work.
        rounds = []
        for _ in range(cfg.list_rounds if verb == "list" else 1):
            bare_round = measured(bare, pids["bench_bare"])
            ours_round = measured(ours, pids["verbs"])
            rounds.append((ours_round, bare_round))
        ratios = [o[0].rps / b[0].rps if b[0].rps else 0.0 for o, b in rounds]
        median = sorted(range(len(rounds)), key=lambda i: ratios[i])[len(rounds) // 2]
        (ours_result, ours_cpu, ours_split), (bare_result, bare_cpu, bare_split) = rounds[median]
        out[verb] = {
            "verbs": {**ours_result.to_json(), "cpu_ms_per_request": ours_split},
            "bare": {**bare_result.to_json(), "cpu_ms_per_request": bare_split},
            "rps_ratio_per_round": [round(r, 3) for r in ratios],
        }
        if len(rounds) > 1:
            run.notes.append(
                f"verbs {verb}: {len(rounds)} bare/verbs pairs, rps ratios "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + "; the median pair is reported"
            )
        errors = ours_result.errors + bare_result.errors
        print(
            f"  {verb:<13} verbs {ours_result.rps:8.0f} rps p50 {ours_result.p50_ms:6.1f} "
            f"p99 {ours_result.p99_ms:6.1f} ms | bare {bare_result.rps:8.0f} rps "
            f"p50 {bare_result.p50_ms:6.1f} p99 {bare_result.p99_ms:6.1f} ms"
            + (f"  ERRORS {errors}" if errors else ""),
            flush=True,
        )
        label = f"verbs {verb}" + (" (50 rows)" if verb in ("list", "search") else "")
        run.rows.append(
            Row(f"{label}: rps", ours_result.rps, "rps", bare_result.rps, "bare endpoint")
        )
        run.rows.append(
            Row(f"{label}: p50", ours_result.p50_ms, "ms", bare_result.p50_ms, "bare endpoint")
        )
        run.rows.append(
            Row(f"{label}: p99", ours_result.p99_ms, "ms", bare_result.p99_ms, "bare endpoint")
        )
        run.rows.append(
            Row(f"{label}: CPU/request (app process)", ours_cpu, "ms", bare_cpu, "bare endpoint")
        )
        run.rows.append(
            Row(f"{label}: CPU/request (Postgres)", ours_split["postgres"], "ms",
                bare_split["postgres"], "bare endpoint")
        )  # fmt: skip
        run.rows.append(
            Row(f"{label}: CPU/request (whole machine)", ours_split["machine"], "ms",
                bare_split["machine"], "bare endpoint")
        )  # fmt: skip
    run.results["verbs"] = out


def run_profile(run: Run, load: Load, pairs: dict[str, tuple[Request, Request]]) -> None:
    assert run.gw is not None
    binary = profile.available()
    if binary is None:
        run.notes.append("--profile: py-spy not found (uv run --with py-spy python -m tests.bench)")
        return
    pid = int(run.gw.reload_state()["pids"]["verbs"])
    raw = run.root / "verbs-profile.txt"
    seconds = int(max(5, run.cfg.seconds))
    spy = profile.start(binary, pid, seconds, raw)
    time.sleep(0.5)
    result = load(pairs["list"][0], seconds + 1)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        run.notes.append(f"py-spy failed: {err.decode(errors='replace')[-300:]}")
        return
    summary = profile.summarize(raw)
    summary["load_rps_while_profiling"] = round(result.rps, 1)
    run.results["profile"] = summary
    # The collapsed stacks, kept beside results.json (git-ignored like it): [stack, samples].
    stacks = [line.rpartition(" ") for line in raw.read_text(errors="replace").splitlines()]
    kept = REPO_ROOT / "bench" / "results-verbs-profile.json"
    kept.parent.mkdir(exist_ok=True)
    kept.write_text(json.dumps([[st, int(n)] for st, _, n in stacks if n.isdigit()]) + "\n")
    print(profile.render(summary), flush=True)


async def measure_revocation(run: Run, world: seed.BenchWorld) -> None:
    assert run.gw is not None
    async with admin_client(run.gw) as admin:
        trials = await revocation.measure(
            run.gw, admin, world.subject, bench_scope(world), run.cfg.trials, run.root / "peers"
        )
    summary = revocation.summary(trials)
    run.results["revocation"] = summary
    print(
        f"  revocation: p50 {summary['p50_ms']} ms, max {summary['max_ms']} ms "
        f"({summary['trials']} trials; answers: {', '.join(summary['refusals'])})",
        flush=True,
    )
    run.rows.append(
        Row("revocation → first refusal: p50", summary["p50_ms"], "ms",
            summary["revoke_call_p50_ms"], "admin revoke call p50")
    )  # fmt: skip
    run.rows.append(
        Row("revocation → first refusal: max", summary["max_ms"], "ms",
            summary["revoke_call_max_ms"], "admin revoke call max")
    )  # fmt: skip


async def measure_issuance(run: Run, world: seed.BenchWorld) -> None:
    assert run.gw is not None
    gw, cfg = run.gw, run.cfg
    out: dict[str, Any] = {}
    scope = bench_scope(world)
    async with admin_client(gw) as admin:
        local_peer = await create_peer_and_grant(admin, world.subject, scope)
        floor = await issuance.in_process_local_signatures(
            gw, local_peer, world.subject, cfg.signatures
        )
        local = await issuance.broker_signatures(
            gw.service_url("ca_broker"),
            gw.service_token,
            local_peer,
            world.subject,
            cfg.signatures,
            cfg.concurrency,
        )
        out["local_in_process"] = floor.to_json()
        out["local_broker"] = local.to_json()
        run.rows.append(
            Row("local CA signatures/s (broker /sign)", local.per_second, "/s",
                floor.per_second, "in-process sign + post-check")
        )  # fmt: skip
        print(
            f"  local CA: {local.per_second:.0f} sign/s via /sign "
            f"(in-process floor {floor.per_second:.0f}/s)",
            flush=True,
        )

        run.stepca = await issuance.start_stepca_broker(gw, run.root, host(5))
        run.notes.extend(run.stepca.notes)
        if run.stepca.broker is not None:
            step_peer = await issuance.stepca_peer(admin, world.subject, scope)
            step = await issuance.broker_signatures(
                run.stepca.url,
                gw.service_token,
                step_peer,
                world.subject,
                cfg.stepca_signatures,
                cfg.concurrency,
            )
            out["stepca_broker"] = step.to_json()
            run.rows.append(
                Row("step-ca signatures/s (broker /sign)", step.per_second, "/s",
                    local.per_second, "local CA via /sign")
            )  # fmt: skip
            print(f"  step-ca: {step.per_second:.0f} sign/s via /sign", flush=True)
            run.stepca.stop()
        else:
            run.rows.append(Row("step-ca signatures/s (broker /sign)", None, "/s", None, "n/a"))

        enroll = await issuance.enrollments(
            gw, admin, world.subject, scope, cfg.enrollments, cfg.concurrency
        )
        out["enrollments"] = enroll.to_json()
        run.rows.append(
            Row("enrollments/s (end to end, nginx)", enroll.per_second, "/s",
                local.per_second, "local CA via /sign")
        )  # fmt: skip
        print(f"  enrollments: {enroll.per_second:.0f}/s (p50 {enroll.p50_ms:.0f} ms)", flush=True)
    run.results["issuance"] = out


# --------------------------------------------------------------------------------------------


def goals(run: Run) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    verbs = run.results.get("verbs", {}).get("list")
    if verbs:
        ratio = verbs["verbs"]["rps"] / verbs["bare"]["rps"] if verbs["bare"]["rps"] else 0
        lines.append(
            (f"verbs list 50 rows ≥ 60 % of bare rps (is {ratio:.0%})",
             "PASS" if ratio >= 0.60 else "FAIL")
        )  # fmt: skip
        p99 = verbs["verbs"]["p99_ms"] / verbs["bare"]["p99_ms"] if verbs["bare"]["p99_ms"] else 0
        lines.append(
            (f"verbs list p99 ≤ 2x bare's (is {p99:.2f}x)", "PASS" if p99 <= 2 else "FAIL")
        )
    rev = run.results.get("revocation")
    if rev and rev["trials"]:
        lines.append(
            (f"revocation → first refusal ≤ 1 s at p50 (is {rev['p50_ms']:.0f} ms)",
             "PASS" if rev["p50_ms"] <= 1000 else "FAIL")
        )  # fmt: skip
        lines.append(
            (f"revocation → first refusal ≤ 1 s at max (is {rev['max_ms']:.0f} ms)",
             "PASS" if rev["max_ms"] <= 1000 else "FAIL")
        )  # fmt: skip
    lines.extend(fanout.goals(run.results.get("fan_out")))
    return lines


def measure_fan_out(run: Run, world: seed.BenchWorld) -> None:
    """Gateway b (started here) fans out over 1, 3, 5 connections to a, 1 of them dead:
    see :mod:`tests.bench.fanout`."""
    assert run.gw is not None
    measured = fanout.measure(
        run.gw,
        world.subject,
        bench_scope(world),
        run.root,
        run.cfg.fanout_calls,
        run.cfg.rows_per_resource,
    )
    run.results["fan_out"] = measured.results
    run.rows.extend(measured.rows)
    run.notes.extend(measured.notes)


async def measure_async(run: Run, world: seed.BenchWorld) -> None:
    if run.cfg.runs("revocation"):
        await measure_revocation(run, world)
    if run.cfg.runs("issuance"):
        await measure_issuance(run, world)


def bench(run: Run) -> None:
    cfg = run.cfg
    # The bench measures the Python path, not nginx's policies: the per-IP enrollment limit and
    # the per-certificate verbs limit are raised (both locations keep their limit_req rules).
    os.environ["MOSAIC_ENROLLMENT_RATE"] = "10000r/s"
    os.environ["MOSAIC_ENROLLMENT_BURST"] = "10000"
    os.environ["MOSAIC_VERBS_RATE"] = "100000r/s"
    os.environ.setdefault("MOSAIC_TEST_NET", test_net())
    print(f"bench: state {run.root}, network {test_net()}.0/24", flush=True)

    started = time.perf_counter()
    spec = stack.gateway_specs(1, run.root, host(12))[0]
    run.gw = Gateway(spec, stack.up(spec))
    gw = run.gw
    run.results["startup_seconds"] = round(time.perf_counter() - started, 1)
    print(f"bench: gateway up in {run.results['startup_seconds']} s", flush=True)

    world, seconds = seed.seed(gw.database_url, rows_per_resource=cfg.rows_per_resource)
    run.results["data_set"] = {
        "users": len(world.users),
        "teams": len(world.teams),
        "rows": world.rows,
        "other_grants": world.extra_grants,
        "audit_rows": world.audit_rows,
        "seed_seconds": round(seconds, 1),
    }
    print(f"bench: seeded {world.rows} + {world.audit_rows} audit rows in {seconds:.1f} s")

    async def main_peer() -> BenchPeer:
        async with admin_client(gw) as admin:
            return await enrolled_peer(
                gw, admin, world.subject, bench_scope(world), run.root / "peers"
            )

    peer = asyncio.run(main_peer())
    bare_upstream = start_bare(run, world, peer)
    state = gw.reload_state()
    nginx_record = ProcessRecord.from_json(state["processes"]["nginx"])
    nginx_variant.install(
        Path(spec.state_dir / "nginx" / "conf" / "nginx.conf"),
        nginx_record,
        bare_upstream,
    )
    time.sleep(0.5)
    pairs = requests_for(visible_task_ids(gw.database_url, world, 200))
    preflight(gw, peer, pairs)

    pids = {**{k: int(v) for k, v in state["pids"].items()}, "bench_bare": run.bare.pid}  # type: ignore[union-attr]
    mem_idle = memory.snapshot(pids)

    load = Load(run, peer)
    run.results["load_generator"] = {"tool": load.tool, "connections": cfg.connections}
    run.results["workers"] = {"verbs": verbs_workers(), "bench_bare": verbs_workers()}
    print(f"bench: load generator {load.tool}, {cfg.connections} connections", flush=True)
    ceiling = load(Request("GET", ("/bench-static",)), max(3.0, cfg.seconds / 2))
    run.results["nginx_static_mtls"] = ceiling.to_json()
    print(f"  nginx static (mTLS, kept alive): {ceiling.rps:.0f} rps", flush=True)
    run.rows.append(Row("nginx static 200 (mTLS; load ceiling)", ceiling.rps, "rps", None, "-"))

    if cfg.runs("verbs"):
        compare_verbs(run, load, pairs, pids)
    if cfg.profile:
        run_profile(run, load, pairs)
    asyncio.run(measure_async(run, world))
    if cfg.runs("fanout"):
        measure_fan_out(run, world)

    mem_after = memory.snapshot(pids)
    run.results["memory_mib"] = {"idle": mem_idle, "after_load": mem_after}
    for name in sorted(mem_after):
        run.rows.append(
            Row(f"memory {name} (MiB, after load)", mem_after[name], "MiB",
                mem_idle.get(name), "idle after start")
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("--profile", action="store_true", help="py-spy the verbs under load")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        default=[],
        help="run only this section (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    cfg = Config.from_env(args.quick, args.profile)
    cfg.only = frozenset(args.only)
    root = Path(tempfile.mkdtemp(prefix="mosaic-bench-"))
    root.chmod(0o755)  # the postgres user must traverse into its cluster folder
    run = Run(cfg, root)
    started = time.perf_counter()
    failed: str | None = None
    try:
        bench(run)
    except Exception:
        failed = traceback.format_exc()
        print(failed, file=sys.stderr)
    finally:
        teardown(run)
    run.results["seconds_total"] = round(time.perf_counter() - started, 1)
    run.results["machine"] = machine()
    run.results["config"] = {
        k: sorted(v) if isinstance(v, frozenset) else v for k, v in vars(cfg).items()
    }
    run.results["notes"] = run.notes
    run.results["goals"] = [{"goal": g, "status": s} for g, s in goals(run)]
    run.results["table"] = [r.to_json() for r in run.rows]
    if failed:
        run.results["failed"] = failed.strip().splitlines()[-1]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(run.results, indent=2, default=str) + "\n")
    print()
    print(render_table(run.rows, goals(run), run.results["machine"], run.notes))
    print(f"\nresults: {args.output} ({run.results['seconds_total']} s)")
    return 0  # informative, never a gate


def teardown(run: Run) -> None:
    if run.stepca is not None:
        run.stepca.stop()
    if run.bare is not None:
        stop(run.bare)
    for state_file in sorted(run.root.glob("*/state.json")):
        try:
            stack.down(stack.spec_from_state(state_file.parent))
        except Exception as exc:  # report, keep tearing down
            print(f"bench: down failed: {exc}", file=sys.stderr)
    if not run.cfg.keep:
        shutil.rmtree(run.root, ignore_errors=True)
