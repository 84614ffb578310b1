"""Tell the local nginx to re-read its files (CRL, server certificate) with SIGHUP.

Only used where nginx runs beside the broker (the native launcher); in compose the nginx
container watches the files itself. A stale pid file may name a recycled PID, so only a process
whose name is nginx is signalled.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("ca_broker.nginx")


def reload_nginx(pid_file: Path | None) -> None:
    if pid_file is None:
        return
    try:
        pid = int(pid_file.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() != "nginx":
            log.warning("nginx reload skipped: pid file names another process")
            return
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError) as exc:
        log.warning("nginx reload skipped", extra={"exception_type": type(exc).__name__})
