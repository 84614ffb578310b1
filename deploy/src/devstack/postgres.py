"""A private PostgreSQL cluster in a folder: initdb, start, stop.

Postgres refuses to run as root, so when we are root the cluster belongs to the ``postgres``
system user and every server command runs through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fedcore.files import write_atomically

PG_SYSTEM_USER = "postgres"


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    if not candidates:
        raise RuntimeError(f"PostgreSQL binary {name!r} not found (install postgresql)")
    return str(candidates[0])


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_SYSTEM_USER, "--", *argv]
    return argv


def _chown_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class PostgresCluster:
    root: Path  # folder holding data/, socket/ and the log
    host: str
    port: int
    superuser: str = "mosaic"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self, password: str) -> None:
        """Create the cluster with SCRAM auth and the given superuser password."""
        for folder in (self.root, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            _chown_to_owner(folder)
        pwfile = self.root / ".pwfile"
        write_atomically(pwfile, password + "\n", mode=0o600)
        _chown_to_owner(pwfile)
        try:
            subprocess.run(
                _as_owner(
                    [
                        _pg_bin("initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        self.superuser,
                        "--pwfile",
                        str(pwfile),
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C",
                    ]
                ),
                check=True,
                capture_output=True,
                text=True,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        # A throwaway developer cluster: durability settings traded for speed (documented in
        # docs/harness.md); never used for a real deployment.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# devstack\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 300\nshared_buffers = 128MB\n"
            )

    def pid(self) -> int | None:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None

    def is_running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def start(self) -> int:
        if self.is_running():
            pid = self.pid()
            assert pid is not None
            return pid
        options = (
            f"-c listen_addresses={self.host} -p {self.port} "
            f"-c unix_socket_directories={self.socket_dir}"
        )
        if not self.log_file.exists():
            self.log_file.touch()
            _chown_to_owner(self.log_file)
        subprocess.run(
            _as_owner(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"postgres did not start; see {self.log_file}")
        return pid

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        subprocess.run(
            _as_owner([_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres (pid {pid}) did not stop")

    def url(self, password: str, database: str) -> str:
        return (
            f"postgresql+psycopg://{self.superuser}:{password}@{self.host}:{self.port}/{database}"
        )

    def create_database(self, password: str, database: str) -> None:
        """CREATE DATABASE if it is missing (idempotent)."""
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{database}"')
