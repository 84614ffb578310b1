"""Start background processes and stop exactly those later.

A PID alone is not an identity: after a reboot or a long time the number can belong to someone
else. Every process we start is recorded with its PID *and* its kernel start time
(``/proc/<pid>/stat`` field 22); ``stop`` only signals a PID whose start time still matches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def process_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall: starttime


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int

    def is_alive(self) -> bool:
        ticks = process_start_ticks(self.pid)
        if ticks is None or ticks != self.start_ticks:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]), pid=int(data["pid"]), start_ticks=int(data["start_ticks"])
        )

    @classmethod
    def of(cls, name: str, pid: int) -> ProcessRecord:
        ticks = process_start_ticks(pid)
        if ticks is None:
            raise RuntimeError(f"{name} (pid {pid}) exited right after start")
        return cls(name=name, pid=pid, start_ticks=ticks)


# Popen objects of children started by this process, kept so they are not garbage-collected while
# running (which warns) and so `stop` can reap them instead of leaving zombies.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    name: str, argv: list[str], env: dict[str, str], log_file: Path, cwd: Path | None = None
) -> ProcessRecord:
    """Start ``argv`` detached from our terminal, output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    return ProcessRecord.of(name, proc.pid)


def stop(record: ProcessRecord, sig: int = signal.SIGTERM, timeout: float = 15.0) -> bool:
    """Stop a recorded process if it is still the one we started. Returns True if it was.

    The signal goes to the recorded process (a supervisor such as uvicorn's stops its own
    workers); if it does not exit in time, its whole process group is killed (every process was
    started in a session of its own, so the group is its and its workers'). What is left of the
    group is killed while the leader's PID cannot have been reused: before its zombie is reaped,
    or — when it died earlier — only if no process holds that PID now."""
    if not record.is_alive():
        # The PID is free (or still our zombie's): the group is ours or empty. E.g. workers
        # orphaned by a supervisor that crashed.
        if process_start_ticks(record.pid) in (None, record.start_ticks):
            _kill_group(record.pid)
        _reap(record.pid)  # it may have died on its own: collect it so no zombie lingers
        return False
    os.kill(record.pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not record.is_alive():
            _kill_group(record.pid)  # a worker its supervisor failed to stop (leader unreaped)
            _reap(record.pid)
            return True
        time.sleep(0.05)
    _kill_group(record.pid)
    for _ in range(100):
        if not record.is_alive():
            break
        time.sleep(0.05)
    _reap(record.pid)
    return True


def _kill_group(leader_pid: int) -> None:
    """SIGKILL what is left of the process group ``spawn`` made for ``leader_pid``. Called only
    while that PID cannot belong to anyone else (see :func:`stop`)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader_pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None:
        # Called once the process is seen gone, which /proc can show a moment before the
        # kernel has its exit status: wait for it (at once in the usual case) rather than poll,
        # or the handle outlives it and warns "still running" at interpreter exit.
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return  # not gone after all: keep the handle
        del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
