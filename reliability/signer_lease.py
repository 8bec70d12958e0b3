"""A crashed signer frees its address: a process holding an address's signing slot (``tasks.signer``: the Prefect
global concurrency limit ``signer-<address>``, held under a ``LEASE_S`` lease) is killed with SIGKILL, and the slot
must be free again once the lease runs out (plus one pass of the server's repossessor), not held for good.

It takes about a minute and a half (the lease is 60 s, the shortest the Prefect server grants), too slow for
``make test``; ``make reliability`` runs it after the crash campaign (``reliability/crash.py``). It needs a real
``prefect server`` with its repossessor service (expired leases are revoked only there), started here on 127.0.0.1.

    .venv/bin/python -m reliability.signer_lease [--api-url URL] [--out data/reliability]

Writes ``signer_lease.json`` and ``signer_lease.md``; exits 0 iff the slot was held while the holder lived, still
held just after it died, and free within ``LEASE_S`` + the repossessor's loop + a margin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "reliability"
#: the server's repossessor pass (Prefect's default, kept: the check measures what an operator gets)
REPOSSESSOR_LOOP_S = 15.0
#: allowance for the waiter's polling and a loaded machine
MARGIN_S = 20.0

# The holder: takes the address's slot as every chain write does, says so, and waits to be killed.
HOLDER = """
import asyncio, sys
from tasks.signer import signer_turn

async def main():
    async with signer_turn(sys.argv[1]):
        print("HELD", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


class Server:
    """``prefect server start`` on a free 127.0.0.1 port with a temporary home; only the repossessor among the
    services that loop (the others cost CPU and are not under test)."""

    OFF = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "TELEMETRY")

    def __init__(self, home: Path):
        self.home = home
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> str:
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": "",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
               **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in self.OFF},
               "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "true",
               "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": str(REPOSSESSOR_LOOP_S)}
        log = open(self.home / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"prefect server did not start: {(self.home / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _active_slots(api_url: str, name: str) -> int:
    with urllib.request.urlopen(f"{api_url}/v2/concurrency_limits/{name}", timeout=10) as r:
        return int(json.loads(r.read())["active_slots"])


async def _try_slot(name: str, timeout_s: float) -> bool:
    """Whether the slot ``name`` can be taken within ``timeout_s`` (given back at once if so)."""
    from prefect.concurrency.asyncio import concurrency

    from tasks.signer import LEASE_S

    try:
        async with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=LEASE_S, strict=True):
            return True
    except TimeoutError:
        return False


def check(api_url: str, work: Path) -> dict:
    """Hold an address's slot in a child process, kill it, and time how long until the slot is free again."""
    os.environ["PREFECT_API_URL"] = api_url
    from tasks.signer import LEASE_S, limit_name

    address = "0x" + secrets.token_hex(32)  # an address no one else signs for
    name = limit_name(address)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = work / "holder.log"
    with open(log, "w") as out:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, address], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=out, text=True)
    facts: dict = {"lease_s": LEASE_S, "repossessor_loop_s": REPOSSESSOR_LOOP_S, "margin_s": MARGIN_S}
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        if line.strip() != "HELD":
            raise RuntimeError(f"the holder did not take the slot: {line!r}\n{log.read_text()[-2000:]}")
        facts["held_while_alive"] = _active_slots(api_url, name) == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        killed = time.monotonic()
        facts["held_after_kill"] = not asyncio.run(_try_slot(name, 3.0))
        # the next signer of the address, waiting no longer than allowed (not signer_turn's 15 minutes)
        facts["freed_in_time"] = asyncio.run(_try_slot(name, LEASE_S + REPOSSESSOR_LOOP_S + MARGIN_S))
        facts["freed_after_s"] = round(time.monotonic() - killed, 1)
        facts["free_after_release"] = _active_slots(api_url, name) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()  # the slot events, sent before the server stops
    facts["ok"] = all(facts[k] for k in ("held_while_alive", "held_after_kill", "freed_in_time", "free_after_release"))
    return facts


def markdown(facts: dict) -> str:
    if "error" in facts:
        return f"## 6. A crashed signer frees its address\n\n**FAILED**: {facts['error']}\n"
    verdict = "passed" if facts["ok"] else "FAILED"
    return "\n".join([
        "## 6. A crashed signer frees its address",
        "",
        "A process took an address's signing slot (the Prefect global concurrency limit `signer-<address>` that every",
        f"chain write holds, under a {facts['lease_s']:.0f} s lease) and was killed with SIGKILL "
        "(`reliability/signer_lease.py`, a real `prefect server` with its repossessor).",
        "",
        "| check | result |",
        "|---|---|",
        f"| slot held while the holder lived | {facts['held_while_alive']} |",
        f"| still held just after the kill (a 3 s attempt to take it) | {facts['held_after_kill']} |",
        f"| the next signer got it in time | {facts['freed_in_time']}, {facts['freed_after_s']} s after the kill "
        f"(allowed: lease {facts['lease_s']:.0f} s + "
        f"repossessor pass {facts['repossessor_loop_s']:.0f} s + {facts['margin_s']:.0f} s) |",
        f"| free again once that signer was done | {facts['free_after_release']} |",
        "",
        f"Verdict: **{verdict}**.",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", help="a running Prefect server with its repossessor (default: start one here)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where signer_lease.json and .md go")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atoma-ops-signer-lease-") as tmp:
        work = Path(tmp)
        server = None
        try:
            if opts.api_url:
                url = opts.api_url
            else:
                (work / "prefect").mkdir()
                server = Server(work / "prefect")
                url = server.start()
            facts = check(url, work)
        except Exception as exc:  # noqa: BLE001 - the part failed; the report says why
            facts = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if server is not None:
                server.stop()
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "signer_lease.json").write_text(json.dumps(facts, indent=1))
    (opts.out / "signer_lease.md").write_text(markdown(facts))
    print(json.dumps(facts))
    return 0 if facts["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
