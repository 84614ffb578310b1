"""The load generator: wrk (keep-alive, C, one thread per core it is given) driving the mTLS
paths through an LD_PRELOAD shim that loads the peer's certificate into wrk's SSL_CTX.

``ensure_wrk`` installs wrk with apt-get when it is missing and we are root (the bench's own
setup step); without it the bench falls back to :mod:`tests.bench.pyload` and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("mtls_shim.c")
MARKER = "BENCHJSON "

# wrk's done() callback prints one JSON line we parse (latencies in microseconds).
_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


@dataclass(frozen=True)
class Request:
    """One kind of request: method, paths (rotated per request), optional JSON body."""

    method: str
    paths: tuple[str, ...]
    body: str | None = None


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # connect/read/write/timeouts + non-2xx answers
    status_errors: int

    def to_json(self) -> dict[str, float | int]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p90_ms": round(self.p90_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 2),
            "errors": self.errors,
            "status_errors": self.status_errors,
        }


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "install", "-y", "-q", "wrk"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "wrk"],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        if done.returncode == 0 and argv[1] == "install":
            break
    return shutil.which("wrk")


def build_shim(out_dir: Path) -> Path:
    """Compile the SSL_CTX_new shim (gcc, a few hundred ms)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("no C compiler for the wrk mTLS shim (apt-get install -y gcc)")
    out = out_dir / "mtls_shim.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SHIM_SOURCE), "-ldl"],
        check=True,
        capture_output=True,
    )
    return out


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def write_script(request: Request, path: Path) -> Path:
    lines = [f"wrk.method = {_lua_string(request.method)}"]
    if request.body is not None:
        lines.append(f"wrk.body = {_lua_string(request.body)}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if len(request.paths) > 1:
        paths = ", ".join(_lua_string(p) for p in request.paths)
        lines += [
            f"local paths = {{{paths}}}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  return wrk.format(nil, paths[(n % #paths) + 1])",
            "end",
        ]
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


@dataclass(frozen=True)
class Wrk:
    binary: str
    shim: Path
    cert: Path
    key: Path
    work_dir: Path

    def run(
        self,
        base_url: str,
        request: Request,
        seconds: float,
        connections: int,
        threads: int = 1,
    ) -> LoadResult:
        script = write_script(
            request, self.work_dir / f"wrk-{abs(hash((request, base_url))) % 10**8}.lua"
        )
        env = {
            **os.environ,
            "LD_PRELOAD": str(self.shim),
            "MTLS_CERT": str(self.cert),
            "MTLS_KEY": str(self.key),
        }
        done = subprocess.run(
            [
                self.binary,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                base_url + request.paths[0],
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=seconds + 60,
        )
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-800:]}")
        data = json.loads(line[len(MARKER) :])
        secs = data["duration_us"] / 1e6
        errors = (
            data["connect_errors"]
            + data["read_errors"]
            + data["write_errors"]
            + data["timeouts"]
            + data["status_errors"]
        )
        ok = data["requests"] - data["status_errors"]
        return LoadResult(
            requests=data["requests"],
            seconds=secs,
            rps=ok / secs if secs else 0.0,
            p50_ms=data["p50_us"] / 1000,
            p90_ms=data["p90_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            errors=errors,
            status_errors=data["status_errors"],
        )
