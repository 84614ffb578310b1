"""Resident memory of the gateway's processes (PIDs from the launcher's state file).

Single processes report RSS. nginx and Postgres are process groups whose members share pages
(nginx's workers, Postgres' shared buffers), so those report the sum of PSS over the group.
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
    """MiB per process name; nginx/postgres as group PSS."""
    out: dict[str, float] = {}
    for name, pid in sorted(pids.items()):
        if name in ("nginx", "postgres"):
            kb = sum(_pss_kb(p) for p in (pid, *children(pid)))
        else:
            kb = _status_kb(pid, "VmRSS")
        if kb:
            out[name] = round(kb / 1024, 1)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (children not included)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
