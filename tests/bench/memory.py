"""Resident memory of the gateway's processes (PIDs from the launcher's state file).

Single processes report RSS. A process with children (nginx's workers, Postgres' backends, the
verbs' uvicorn workers) reports the sum of PSS over it and its children: they share pages.
"""

from __future__ import annotations

import os
from pathlib import Path


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


def snapshot(pids: dict[str, int]) -> dict[str, float]:
    """MiB per process name; a process with children as their PSS summed."""
    out: dict[str, float] = {}
    for name, pid in sorted(pids.items()):
        kids = children(pid)
        kb = sum(_pss_kb(p) for p in (pid, *kids)) if kids else _status_kb(pid, "VmRSS")
        if kb:
            out[name] = round(kb / 1024, 1)
    return out


def _own_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process and its live children (workers) have used so far."""
    return sum(_own_cpu_seconds(p) for p in (pid, *children(pid)))


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle so far (load generator, nginx, Postgres, apps, rest)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
