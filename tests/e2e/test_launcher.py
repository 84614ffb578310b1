"""`make up` / `make down` through the launcher: idempotent up, and down leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.processes import ProcessRecord
from tests.support.net import host

FIRST_HOST = host(30)


def _devstack(state_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack",
            *args,
            "--state-root",
            str(state_root),
            "--first-host",
            FIRST_HOST,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def test_up_twice_is_safe_and_down_leaves_no_process_or_port() -> None:
    root = Path(tempfile.mkdtemp(prefix="mosaic-test-launcher-"))
    root.chmod(0o755)
    try:
        first = _devstack(root, "up")
        assert first.returncode == 0, first.stderr
        assert "state written to" in first.stdout
        state = json.loads((root / "a" / "state.json").read_text())
        for key in (
            "name",
            "public_url",
            "admin_url",
            "admin_token",
            "ca_bundle",
            "database_url",
            "pids",
        ):
            assert key in state
        assert Path(state["ca_bundle"]).is_absolute()
        assert Path(state["ca_bundle"]).exists()
        records = [ProcessRecord.from_json(r) for r in state["processes"].values()]
        assert {r.name for r in records} == {
            "postgres",
            "ca_broker",
            "enrollment",
            "grants",
            "verbs",
            "nginx",
        }

        second = _devstack(root, "up")
        assert second.returncode == 0, second.stderr
        state2 = json.loads((root / "a" / "state.json").read_text())
        assert state2["pids"] == state["pids"]  # nothing restarted, nothing duplicated
        assert state2["admin_token"] == state["admin_token"]

        ports = list(state["ports"].values())
        down = _devstack(root, "down")
        assert down.returncode == 0, down.stderr
        assert all(not r.is_alive() for r in records)
        assert [p for p in ports if _listening(FIRST_HOST, p)] == []
    finally:
        _devstack(root, "down")
        shutil.rmtree(root, ignore_errors=True)
