"""`make demo` end to end: the narrated demo in its own state folder and loopback addresses
(never the developer's 127.0.0.2/.3), checked for its exit code, its key lines and that no
secret reaches the terminal; its gateways are stopped afterwards."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import host
from tests.support.stack import stop_gateways

REPO = Path(__file__).resolve().parents[2]
REVOKED_CODES = ("grant_revoked", "client_cert_revoked", "client_cert_invalid")


@pytest.fixture
def demo_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mosaic-test-demo-"))
    root.chmod(0o755)  # the postgres user must traverse into its cluster folder
    try:
        yield root
    finally:
        stop_gateways(root)


def test_make_demo_runs_the_demo() -> None:
    planned = subprocess.run(
        ["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert planned.returncode == 0, planned.stderr
    assert "python -m devstack demo" in planned.stdout


def test_the_demo_tells_the_whole_story_and_leaves_the_stack_up(demo_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOSAIC_", "FED_"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack",
            "demo",
            "--state-root",
            str(demo_root),
            "--first-host",
            host(40),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]

    for number in range(1, 10):
        assert f"[{number}/9] " in out
    for line in (
        "Start gateways A and B",
        "On B: enroll at A with the enrollment URL",
        "mosaic federation peer add",
        "mosaic federation connection capabilities",
        "supported verbs:    capabilities,list,get,search",
        "search A's notes for 'research'",
        "source local: ok",
        "On A: revoke the grant",
    ):
        assert line in out, line
    connection = re.search(r"--name (a-[0-9a-f]{4})", out)
    assert connection is not None
    assert f"source federated:{connection.group(1)}: ok" in out
    # Fan-out rows carry both gateways' names.
    fanout = out.split("[8/9]")[1].split("[9/9]")[0]
    assert re.search(r"^\s+\| b\s+-\s+[0-9a-f-]{36}\s+task ", fanout, re.M)
    assert re.search(rf"^\s+\| a\s+{connection.group(1)}\s+[0-9a-f-]{{36}}\s+task ", fanout, re.M)
    # After the revocation: refused with A's code, B's own rows still there.
    after = out.split("[9/9]")[1]
    assert any(f"error: {code}:" in after for code in REVOKED_CODES), after
    assert any(
        f"partial answer: federated:{connection.group(1)} ({code})" in after
        for code in REVOKED_CODES
    ), after
    assert "source local: ok" in after
    assert f"devstack down --state-root {demo_root}" in out.splitlines()[-1]

    # No secret on the terminal: no whole enrollment token, no bearer token, no DB password.
    assert not re.search(r"/enrollment/[0-9a-f]{64}", out + result.stderr)
    for line in (out + result.stderr).splitlines():
        if re.search(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", line):
            assert "fingerprint" in line, line  # the CA pin is public; tokens never are
    for name in ("a", "b"):
        state = json.loads((demo_root / name / "state.json").read_text())
        assert state["admin_token"] not in out + result.stderr
        assert state["database_url"] not in out + result.stderr
        assert state["processes"], "the demo leaves its gateways running"
