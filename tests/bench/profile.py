"""py-spy on the verbs process while it serves the list load; a short summary of where the time
goes (self time by package and by function, inclusive time of the request's stages).

py-spy is not a project dependency: run ``uv run --with py-spy python -m tests.bench --profile``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")

# Inclusive stages of a verbs request: the first frame (outermost) matching wins per sample.
STAGES: tuple[tuple[str, str], ...] = (
    ("nginx→app: uvicorn/httptools protocol", "uvicorn/protocols/http/"),
    ("trust path: authenticate()", "authenticate (verbs/auth.py"),
    ("  cert re-verification (cache)", "verify (fedcore/client_cert.py"),
    ("  binding query", "load_certificate_binding"),
    ("row query (list/search/get)", "list_content"),
    ("audit insert", "insert_audit"),
    ("pool checkout/return", "connection (psycopg_pool/"),
    ("JSON response render (orjson)", "render (fedcore/responses.py"),
    ("request body parse/validate", "parse_body"),
    ("request id middleware", "fedcore/request_id.py"),
)


def available() -> str | None:
    return shutil.which("py-spy")


def start(binary: str, pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--subprocesses",  # the verbs' uvicorn workers are children of their supervisor
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _package(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0]
    for ours in ("verbs", "fedcore"):
        if f"/{ours}/" in file or file.startswith(f"{ours}/"):
            return ours
    if "/lib/python" in file:
        return "stdlib:" + file.rsplit("/", 1)[-1]
    return file.rsplit("/", 1)[-1] or "?"


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    samples = 0
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        samples += count
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        func, file = (match.group("func"), match.group("file")) if match else (leaf, "")
        by_package[_package(file)] += count
        by_function[f"{func} ({file.rsplit('site-packages/', 1)[-1]})"] += count
        seen = set()
        for label, needle in STAGES:
            if any(needle in frame for frame in frames) and label not in seen:
                stages[label] += count
                seen.add(label)

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / samples, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": samples,
        "self_by_package": pct(by_package),
        "self_by_function": pct(by_function),
        "inclusive_stages": [
            (label, round(100 * stages[label] / samples, 1) if samples else 0.0)
            for label, _ in STAGES
        ],
    }


def render(summary: dict[str, Any]) -> str:
    lines = [f"py-spy samples: {summary['samples']} (active time only)"]
    for title, key in (
        ("inclusive, by request stage", "inclusive_stages"),
        ("self time, by package", "self_by_package"),
        ("self time, by function", "self_by_function"),
    ):
        lines.append(f"  {title}:")
        lines += [f"    {pct:5.1f}%  {name}" for name, pct in summary[key]]
    return "\n".join(lines)
