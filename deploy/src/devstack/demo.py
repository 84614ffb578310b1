"""``make demo`` / ``python -m devstack demo``: the whole federation story on one machine.

Two gateways (A on the first host, B on the next one), sample data on both, a grant on A,
enrollment of B with ``mosaic federation peer add``, capabilities / list / search from B, a
fan-out over B's own data and A's, then a revocation on A and B's next call refused — every
step narrated, every action a real ``mosaic`` command against the real stack. The stack stays
up at the end; the last line says how to stop it.

Secrets stay off the terminal: the enrollment token and bearer tokens are shown shortened, the
database URL not at all.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from devstack import stack

REVOKED_CODES = ("grant_revoked", "client_cert_revoked", "client_cert_invalid")
TOTAL_STEPS = 9
_TOKEN_IN_URL = re.compile(r"(/enrollment/)([0-9a-f]{8})[0-9a-f]{56}")
_PIN = re.compile(r"(#ca_fp=)([0-9a-f]{8})[0-9a-f]{56}")


class DemoFailed(RuntimeError):
    pass


def _redact(text: str) -> str:
    return _PIN.sub(r"\1\2…", _TOKEN_IN_URL.sub(r"\1\2…", text))


class Demo:
    def __init__(self, state_root: Path, first_host: str, out: TextIO | None = None) -> None:
        self.state_root = state_root
        self.first_host = first_host
        self.out = out or sys.stdout
        self.step_no = 0
        self.suffix = secrets.token_hex(2)  # reruns never collide on names
        self.user_token: str | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="mosaic-demo-"))

    # -- narration ---------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str, why: str) -> None:
        self.step_no += 1
        self.say()
        self.say(f"[{self.step_no}/{TOTAL_STEPS}] {title}")
        for line in why.splitlines():
            self.say(f"      {line}")

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            self.say(f"      | {line}")

    # -- the CLI ------------------------------------------------------------------------------

    def mosaic(
        self,
        *args: str,
        gateway: str,
        shown: Sequence[str] | None = None,
        as_user: bool = False,
        expect_ok: bool = True,
        echo: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``mosaic`` (the real CLI) against gateway ``a`` or ``b`` of this demo."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
        env.update({"MOSAIC_STATE_ROOT": str(self.state_root), "MOSAIC_GATEWAY": gateway})
        if as_user:
            assert self.user_token is not None
            env["MOSAIC_ADMIN_TOKEN"] = self.user_token
        printable = " ".join(shlex.quote(a) for a in (shown or args))
        self.say(f"      {gateway.upper()}$ mosaic {_redact(printable)}")
        result = subprocess.run(
            [sys.executable, "-m", "fedcore.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if echo and result.stdout.strip():
            self.show(_redact(result.stdout))
        if result.stderr.strip() and (echo or result.returncode != 0):
            self.show(_redact(result.stderr))
        if expect_ok and result.returncode != 0:
            raise DemoFailed(f"`mosaic {args[0]} {args[1]}` failed (exit {result.returncode})")
        return result

    def mosaic_json(self, *args: str, gateway: str, shown: Sequence[str] | None = None) -> Any:
        """The command's ``--json`` answer; the command line is shown, the JSON is not."""
        result = self.mosaic(*args, "--json", gateway=gateway, shown=shown, echo=False)
        return json.loads(result.stdout)

    # -- the story ----------------------------------------------------------------------------

    def run(self) -> None:
        specs = stack.gateway_specs(2, self.state_root, self.first_host)
        self.say("Mosaic Federation Gateway — demo")
        self.say(
            f"Gateway A ({specs[0].host}) shares some of its user alice's data with gateway "
            f"B ({specs[1].host}).\nB reads it live over mutual TLS; nothing is copied to B."
        )

        self.step(
            "Start gateways A and B",
            "Each: its own Postgres, the ca-broker, enrollment, grants and verbs services, nginx.",
        )
        states = {}
        for spec in specs:
            started = time.monotonic()
            states[spec.name] = stack.up(spec)
            self.say(
                f"      gateway {spec.name.upper()}: public {states[spec.name]['public_url']}, "
                f"admin {states[spec.name]['admin_url']} "
                f"(up in {time.monotonic() - started:.0f} s)"
            )

        self.step(
            "Sample data on both gateways",
            "users alice/bob/carol, teams research/ops/finance; tasks, notes and credentials.\n"
            "alice is in research and ops; bob in research and finance; carol in finance.",
        )
        worlds = {}
        for name in ("a", "b"):
            prefix = f"{name}{self.suffix}-"
            worlds[name] = self.mosaic_json(
                "dev",
                "seed",
                "--database-url",
                str(states[name]["database_url"]),
                "--prefix",
                prefix,
                gateway=name,
                shown=[
                    "dev",
                    "seed",
                    "--database-url",
                    "<from the state file>",
                    "--prefix",
                    prefix,
                ],
            )
            self.say(
                f"      gateway {name.upper()}: users {prefix}alice/bob/carol, "
                f"{sum(sum(c.values()) for c in worlds[name]['rows'].values())} content rows"
            )

        self.step(
            "On A: register B as a peer and grant it part of alice's data",
            "Scope: tasks and notes; alice's personal rows and her research team's rows;\n"
            "at most 50 rows per query. Credentials, the ops and finance teams stay home.",
        )
        peer = self.mosaic_json("federation", "peer", "create", f"b-{self.suffix}", gateway="a")
        self.say(f"      peer {peer['name']} registered ({peer['state']})")
        scope_file = self.folder / "scope.json"
        scope_file.write_text(
            json.dumps(
                {
                    "resources": ["tasks", "notes"],
                    "include_teams": [worlds["a"]["teams"]["research"]],
                    "include_personal": True,
                    "max_rows_per_query": 50,
                },
                indent=2,
            )
        )
        self.show(scope_file.read_text())
        grant = self.mosaic_json(
            "federation",
            "grant",
            "create",
            "--user",
            worlds["a"]["users"]["alice"],
            "--peer",
            peer["id"],
            "--scope",
            str(scope_file),
            gateway="a",
        )
        self.say(f"      grant {grant['id']} ({grant['status']})")
        token = self.mosaic_json("federation", "grant", "token", grant["id"], gateway="a")
        url = str(token["enrollment_url"])
        self.say(f"      enrollment URL (single use, {token['expires_at']}):")
        self.say(f"        {_redact(url)}")

        connection = f"a-{self.suffix}"
        self.step(
            "On B: enroll at A with the enrollment URL",
            "B makes a P-256 key (sealed at rest on B), sends a CSR; A's CA is pinned by the\n"
            "URL's #ca_fp, so B never trusts on first use. A's CA signs a 24 h client\n"
            "certificate carrying the grant id and alice's id.",
        )
        self.mosaic("federation", "peer", "add", url, "--name", connection, gateway="b")

        self.say()
        self.say("      B's queries run as B's local user alice (a user token on B):")
        created = self.mosaic_json(
            "admin",
            "token",
            "create",
            "--role",
            "user",
            "--user",
            worlds["b"]["users"]["alice"],
            "--database-url",
            str(states["b"]["database_url"]),
            gateway="b",
            shown=[
                "admin",
                "token",
                "create",
                "--role",
                "user",
                "--user",
                worlds["b"]["users"]["alice"],
                "--database-url",
                "<from the state file>",
            ],
        )
        self.user_token = str(created["token"])
        self.say(f"      token {self.user_token[:8]}… (shown once; kept in MOSAIC_ADMIN_TOKEN)")

        source = f"federated:{connection}"
        self.step(
            "From B: capabilities — what may B read at A?",
            "B's verbs service calls A over mTLS with the enrolled certificate.",
        )
        self.mosaic("federation", "connection", "capabilities", connection, gateway="b")

        self.step(
            "From B: list A's tasks through the connection",
            "A answers alice's personal and research rows only, each tagged _source = a.",
        )
        self.mosaic("federation", "query", "tasks", "--source", source, gateway="b", as_user=True)

        self.step(
            "From B: search A's notes for 'research'",
            "The search runs on A, inside the same scope.",
        )
        self.mosaic(
            "federation",
            "query",
            "notes",
            "--source",
            source,
            "--query",
            "research",
            gateway="b",
            as_user=True,
        )

        self.step(
            "From B: one query over B's own tasks and A's (fan-out, source=all)",
            "Local rows follow B's own permission rules; every row says where it came from\n"
            "(_source); a dead peer would make the answer partial, never fail it.",
        )
        fanned = self.mosaic(
            "federation", "query", "tasks", "--source", "all", gateway="b", as_user=True
        )
        if f"source {source}: ok" not in fanned.stdout or "source local: ok" not in fanned.stdout:
            raise DemoFailed("the fan-out did not answer from both gateways")
        self.say("      Rows from b (local) and from a (via the connection), local first.")

        self.step(
            "On A: revoke the grant; B's next call is refused",
            "A revokes the grant and B's certificate (it lands on A's CRL). B is not asked.",
        )
        self.mosaic(
            "federation", "grant", "revoke", grant["id"], "--reason", "demo over", gateway="a"
        )
        refused = self.mosaic(
            "federation",
            "connection",
            "capabilities",
            connection,
            gateway="b",
            expect_ok=False,
        )
        if refused.returncode == 0 or not any(code in refused.stderr for code in REVOKED_CODES):
            raise DemoFailed("B's call after the revocation was not refused")
        answer = self.mosaic(
            "federation", "query", "tasks", "--source", "all", gateway="b", as_user=True
        )
        if not any(code in answer.stdout for code in REVOKED_CODES):
            raise DemoFailed("the fan-out after the revocation did not report A's refusal")
        self.say("      B still answers with its own rows; A's part is refused with A's code.")


def _stop_hint(state_root: Path) -> str:
    if state_root.resolve() == stack.DEFAULT_STATE_ROOT.resolve():
        return "make down"
    return f"uv run python -m devstack down --state-root {shlex.quote(str(state_root))}"


def run_demo(state_root: Path, first_host: str, out: TextIO | None = None) -> int:
    demo = Demo(state_root, first_host, out)
    try:
        demo.run()
    except (DemoFailed, RuntimeError, subprocess.TimeoutExpired) as exc:
        demo.say()
        demo.say(f"demo failed at step {demo.step_no}: {exc}")
        demo.say(f"Logs: {state_root}/<a|b>/logs. Stop the gateways with: {_stop_hint(state_root)}")
        return 1
    finally:
        shutil.rmtree(demo.folder, ignore_errors=True)  # its scratch files (the scope JSON)
    demo.say()
    demo.say("Done. Both gateways are still running (state files under " + f"{state_root}/).")
    where = "" if _stop_hint(state_root) == "make down" else f"MOSAIC_STATE_ROOT={state_root} "
    demo.say(f"Try: {where}MOSAIC_GATEWAY=b uv run mosaic federation connection list")
    demo.say(f"Stop everything with: {_stop_hint(state_root)}")
    return 0
