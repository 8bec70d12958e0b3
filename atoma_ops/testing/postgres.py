"""A throwaway PostgreSQL cluster on 127.0.0.1, for the tests and benchmarks of the journal on PostgreSQL.

It runs Debian's PostgreSQL server binaries (``/usr/lib/postgresql/<version>/bin``, the ``postgresql`` package),
installing the package with apt-get when they are missing and this process may (root); otherwise it fails loudly
with what to install, never skips. PostgreSQL refuses to run as root, so as root the cluster runs as the
``postgres`` user the package creates (``runuser``). The cluster lives in a temporary folder, listens on a free port
of 127.0.0.1 only, trusts local connections (there is no one else), and is removed on :meth:`PgCluster.stop`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries are not installed and could not be installed here."""


def server_bin_dir(*, install: bool = True) -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` and ``pg_ctl``; installs Debian's ``postgresql``
    package first when there is none and ``install`` (and this process is root)."""
    found = _bin_dirs()
    if not found and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(cmd, env=env, capture_output=True)
        found = _bin_dirs()
    if not found:
        raise PostgresMissing(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "install Debian's package with `apt-get install -y postgresql`"
        )
    return found[-1]


def _bin_dirs() -> list[Path]:
    dirs = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    dirs = [d for d in dirs if (d / "pg_ctl").exists()]
    return sorted(dirs, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One PostgreSQL cluster. ``fsync=False`` for tests (nothing to survive a power cut); benchmarks keep it on,
    so a commit costs what it costs in production.

    ``listen``: the addresses it listens on (comma-separated; 127.0.0.1 always among them); ``trust``: a network
    (CIDR) whose hosts may connect too, e.g. the private network of the multi-host test's namespaces."""

    def __init__(self, *, fsync: bool = True, user: str = "atoma", listen: str = "127.0.0.1", trust: str | None = None):
        self.bin = server_bin_dir()
        self.user = user
        self.fsync = fsync
        self.listen = ",".join(dict.fromkeys(["127.0.0.1", *(a.strip() for a in listen.split(",") if a.strip())]))
        self.host = next((a for a in self.listen.split(",") if a != "127.0.0.1"), "127.0.0.1")
        self.trust = trust
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="atoma-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root: the package's own user runs it
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing("running as root needs the `postgres` user that Debian's package creates") from None
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o700)

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}")

    def start(self) -> "PgCluster":
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        if self.trust:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.trust} trust\n")
        options = f"-h {self.listen} -p {self.port} -k {self.root} -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A URL of ``database`` (at the first address it listens on besides 127.0.0.1, if any)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = name or "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
