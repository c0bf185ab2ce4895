"""A real PostgreSQL server for the tests (Debian's binaries; .ci/run installs them), started once per session.

The `postgres` superuser logs in without a password (trust); the role `faultllm` only with its password
(scram-sha-256), so tests of password handling fail if the password does not reach the driver.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PASSWORD = "S3cret-pw-0451"  # the `faultllm` role's


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*command) -> list[str]:
    """The server refuses to run as root: run its tools as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *map(str, command)] if os.geteuid() == 0 else list(map(str, command))


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(found[-1]) if found else None


class Server:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir, self.port = bin_dir, _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="faultllm-pg-"))
        self.base.chmod(0o777)  # the postgres user owns the cluster inside
        data = self.base / "data"
        self._run("initdb", "-D", data, "-A", "trust", "-U", "postgres")
        hba = data / "pg_hba.conf"  # first match wins: the role `faultllm` needs its password
        hba.write_text("host all faultllm 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", data, "-o", options, "-l", self.base / "server.log", "-w", "start")
        self.sql(f"CREATE ROLE faultllm LOGIN PASSWORD '{PASSWORD}'")

    def _run(self, tool: str, *args) -> None:
        subprocess.run(_as_postgres(self.bin_dir / tool, *args), check=True, capture_output=True)

    def sql(self, statement: str, database: str = "postgres") -> None:
        self._run("psql", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-d", database, "-c", statement)

    def createdb(self, name: str, owner: str = "postgres") -> None:
        self._run("createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-O", owner, name)

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        login = f"{user}:{password}" if password else user
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(self.bin_dir / "pg_ctl", "-D", self.base / "data", "-m", "immediate", "stop"),
            capture_output=True,
        )
        shutil.rmtree(self.base, ignore_errors=True)
