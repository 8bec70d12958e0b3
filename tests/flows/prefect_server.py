"""A real ``prefect server`` for tests, in subprocesses of its own: a free port on 127.0.0.1, its own
``PREFECT_HOME``, ``PREFECT_API_URL`` (and ``PREFECT_SERVER_API_PORT``, so the UI would call the right port), and a
stop that leaves no process behind (the worker runs each flow run in a new session).

One server per test process serves the deployment test and the alerts tests (``prefect_server`` in
``tests/flows/conftest.py``, started on first use, reset after each test); the session's in-process test harness is
not involved.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(prefect_home: Path, api_url: str | None) -> dict[str, str]:
    """The environment of every Prefect subprocess: ours only (no PREFECT_* of this process, no profile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        # runs are only ever created by this test
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        # the worker picks up a new run within a second
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
        COLUMNS="200",
    )
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A long-running subprocess, leader of its own process group (see ``stop``)."""
    out = log.open("wb")
    try:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(pid: int) -> dict[int, int]:
    """The live descendants of ``pid`` and their start times (from /proc; none where there is no /proc)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        if (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, start in children.get(todo.pop(), []):
            out[child] = start
            todo.append(child)
    return out


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited after ``timeout``; then SIGKILL whatever it
    had started in a session of its own (the worker runs each flow run in a new session) that is still alive."""
    started = _descendants(proc.pid)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # also what is left of the group once its leader has gone
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(5)
    for pid, start in started.items():
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == start:  # the same process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(
        [*PREFECT, "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def wait_healthy(api: httpx.Client, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the Prefect server exited ({server.returncode}):\n{tail(log)}"
        try:
            if api.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the Prefect server did not become healthy in {timeout} s:\n{tail(log)}")


class _Retrying(httpx.HTTPTransport):
    """Retries what Prefect's own client retries: 503 (SQLite busy under the server's services) and 429."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(8):
            response = super().handle_request(request)
            if response.status_code not in (429, 503):
                return response
            response.read()
            response.close()
            time.sleep(0.25 * (attempt + 1))
        return response


class PrefectServer:
    """``with PrefectServer(tmp) as server:`` a running server; ``server.env`` for its clients' subprocesses,
    ``server.api`` (httpx, base URL the API), ``server.cli(...)`` for ``prefect …`` commands.

    ``extra_env`` reaches the server (its services' settings, e.g. how soon a run turns Late; its database URL);
    ``host``: the address it listens on (the multi-host test's private network; 127.0.0.1 by default);
    ``database``: a SQLite file (of this Prefect version) copied in as the server's own database before it starts,
    if it exists (a migrated one saves the start its migrations)."""

    def __init__(self, folder: Path, extra_env: dict[str, str] | None = None, host: str = "127.0.0.1",
                 database: str | os.PathLike | None = None):
        self.folder = Path(folder)
        self.home = self.folder / "prefect-home"
        self.home.mkdir(parents=True, exist_ok=True)
        if database is not None and os.path.exists(database):
            shutil.copyfile(database, self.home / "prefect.db")  # the default database: $PREFECT_HOME/prefect.db
        self.host = host
        self.port = free_port()
        self.api_url = f"http://{host}:{self.port}/api"
        self.env = prefect_env(self.home, self.api_url)
        self.log = self.folder / "server.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.api: httpx.Client | None = None

    def start(self) -> "PrefectServer":
        env = {**prefect_env(self.home, None), "PREFECT_SERVER_API_PORT": str(self.port), **self.extra_env}
        self.proc = start([*PREFECT, "server", "start", "--host", self.host, "--port", str(self.port)], env, self.log)
        return self

    def wait(self, timeout: float = 120) -> "PrefectServer":
        """Block until the API answers (start first, do other work, then wait: migrating takes seconds)."""
        self.api = httpx.Client(base_url=self.api_url, timeout=30, transport=_Retrying())
        wait_healthy(self.api, self.proc, self.log, timeout)
        return self

    def cli(self, *args: str, timeout: float = 120) -> str:
        return cli(*args, env=self.env, timeout=timeout)

    def reset(self) -> None:
        """Delete what a test leaves on the server (automations, deployments, unfinished runs, work pools,
        variables, concurrency limits, blocks): the next test sharing it starts from an empty server, as on one
        of its own, without paying another start (migrating a fresh database takes seconds)."""
        api = self.api

        def each(path: str, body: dict | None = None) -> list[dict]:
            return api.post(f"{path}/filter", json={**(body or {}), "limit": 200}).raise_for_status().json()

        def delete(path: str) -> None:
            response = api.delete(path)
            assert response.status_code in (200, 204, 404), f"DELETE {path}: {response.status_code} {response.text}"

        for a in each("/automations"):
            delete(f"/automations/{a['id']}")
        unfinished = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING", "PAUSED",
                                                                 "CANCELLING"]}}}}
        for r in each("/flow_runs", unfinished):
            delete(f"/flow_runs/{r['id']}")
        for d in each("/deployments"):
            delete(f"/deployments/{d['id']}")
        for p in each("/work_pools"):
            if p["name"] != "default-agent-pool":
                delete(f"/work_pools/{p['name']}")
        for v in each("/variables"):
            delete(f"/variables/{v['id']}")
        for c in each("/v2/concurrency_limits"):
            delete(f"/v2/concurrency_limits/{c['id']}")
        for b in each("/block_documents"):
            delete(f"/block_documents/{b['id']}")

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
        if self.proc is not None:
            stop(self.proc)

    def __enter__(self) -> "PrefectServer":
        return self.start().wait()

    def __exit__(self, *exc) -> None:
        self.stop()
