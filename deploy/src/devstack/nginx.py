"""Render the nginx templates under ``nginx/`` and run nginx for one gateway."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from devstack.processes import ProcessRecord
from fedcore.files import write_atomically

TEMPLATE_DIR = Path(__file__).resolve().parents[3] / "nginx"
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
TEMPLATES = {
    "gateway.conf.template": "nginx.conf",
    "proxy_identity.conf.template": "proxy_identity.conf",
    "json_errors.conf.template": "json_errors.conf",
}


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``${UPPER}`` placeholders; an unknown placeholder is an error, not an empty string."""
    missing = sorted({m for m in _PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise KeyError(f"nginx template needs values for: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if not found:
        raise RuntimeError("nginx not found: apt-get install -y nginx")
    return found


def worker_user() -> str | None:
    """nginx workers drop root; as root we hand them to an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    for candidate in ("www-data", "nginx", "nobody"):
        try:
            pwd.getpwnam(candidate)
        except KeyError:
            continue
        return candidate
    return None


def write_config(conf_dir: Path, run_dir: Path, log_dir: Path, values: dict[str, str]) -> Path:
    for folder in (conf_dir, run_dir, log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    user = worker_user()
    full = {
        "NGINX_CONF_DIR": str(conf_dir),
        "NGINX_RUN_DIR": str(run_dir),
        "NGINX_LOG_DIR": str(log_dir),
        "NGINX_USER_DIRECTIVE": f"user {user};" if user else "",
        **values,
    }
    for template_name, output_name in TEMPLATES.items():
        text = (TEMPLATE_DIR / template_name).read_text()
        write_atomically(conf_dir / output_name, render(text, full), mode=0o600)  # proxy secret
    if user:
        entry = pwd.getpwnam(user)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            path = run_dir / sub
            path.mkdir(exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return conf_dir / "nginx.conf"


def test_config(conf: Path) -> None:
    result = subprocess.run(
        [nginx_binary(), "-t", "-q", "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"nginx config invalid: {result.stderr.strip()}")


def _pid_from_file(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def start(conf: Path, run_dir: Path) -> ProcessRecord:
    """Start the nginx master (it daemonises) and return its record from the pid file."""
    test_config(conf)
    pid_file = run_dir / "nginx.pid"
    pid_file.unlink(missing_ok=True)
    subprocess.run(
        [nginx_binary(), "-c", str(conf), "-e", str(run_dir.parent / "logs" / "nginx-start.log")],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = _pid_from_file(pid_file)
        if pid:
            return ProcessRecord.of("nginx", pid)
        time.sleep(0.05)
    raise RuntimeError("nginx did not write its pid file")


def reload(record: ProcessRecord, conf: Path) -> None:
    """Re-read config, certificates and the CRL (SIGHUP to the master)."""
    test_config(conf)
    if record.is_alive():
        os.kill(record.pid, signal.SIGHUP)
