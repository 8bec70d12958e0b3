"""Alerts and the signer limit on a real ``prefect server`` (the test process's shared one on 127.0.0.1,
``prefect_server``): the automations installed by ``atoma-ops prefect automations install``, a webhook receiver on 127.0.0.1 that must get a
notification for a failing settlement run, a short balance (an event) and a late run; and two deployments' runs
signing for one address, which must take turns on the address's global concurrency limit.

Runs of deployments are executed by ``run_flow_run.py`` in a subprocess (what a worker's subprocess does, without
the worker; two independent runs share one), with ``PREFECT_API_URL`` pointing at this server. The server marks a
run Late one second after its scheduled time (``PREFECT_SERVER_SERVICES_LATE_RUNS_*``), so the Late notification
needs no waiting.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from atoma_ops.home import LocalnetHome
from atoma_ops.testing.served import NODE, opened, served_stacks
from tests.flows.prefect_server import ROOT, PrefectServer, tail

RUNNER = Path(__file__).with_name("run_flow_run.py")
SCRIPT = Path(sys.executable).parent / "atoma-ops"
WRITE_TASKS = ("try_settle_stacks", "register_node", "subscribe_node")
TERMINAL_TYPES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED", "PAUSED"}


@pytest.fixture
def server(prefect_server):
    """The test process's real Prefect server (``prefect_server``: empty at the start, a run turns Late one second
    past its time)."""
    return prefect_server


class Hooks:
    """A webhook receiver on 127.0.0.1: every POSTed JSON body, in arrival order."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.changed = threading.Condition()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hooks.changed:
                    hooks.bodies.append(body)
                    hooks.changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, what: str, predicate, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((b for b in self.bodies if predicate(b)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"no notification {what} in {timeout} s; got {[b['subject'] for b in self.bodies]}"
                self.changed.wait(left)


@pytest.fixture(scope="module")
def hooks():
    h = Hooks()
    yield h
    h.httpd.shutdown()


def atoma_ops(server: PrefectServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=server.env, capture_output=True,
                          text=True, timeout=120)


def deployment(server: PrefectServer, name: str, entrypoint: str) -> str:
    flow_id = server.api.post("/flows/", json={"name": name}).raise_for_status().json()["id"]
    return server.api.post(
        "/deployments/", json={"name": name, "flow_id": flow_id, "entrypoint": entrypoint, "path": str(ROOT)}
    ).raise_for_status().json()["id"]


def flow_run(server: PrefectServer, deployment_id: str, parameters: dict, state: dict | None = None) -> str:
    body = {"parameters": parameters, **({"state": state} if state else {})}
    return server.api.post(f"/deployments/{deployment_id}/create_flow_run", json=body).raise_for_status().json()["id"]


def execute(server: PrefectServer, flow_run_ids: str | list[str], log: Path) -> subprocess.Popen:
    """One process running ``flow_run_ids`` one after the other (see ``run_flow_run.py``)."""
    ids = [flow_run_ids] if isinstance(flow_run_ids, str) else list(flow_run_ids)
    out = log.open("wb")
    try:
        return subprocess.Popen([sys.executable, str(RUNNER), *ids], cwd=ROOT, env=server.env, stdout=out,
                                stderr=subprocess.STDOUT)
    finally:
        out.close()


def finished(proc: subprocess.Popen, log: Path, timeout: float = 180, runs: int = 1) -> str | list[str]:
    """The final state type of the process's run (of its ``runs`` runs, in order, when more than one)."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the run did not end in {timeout} s:\n{tail(log)}") from None
    assert proc.returncode == 0, tail(log)
    states = [line for line in log.read_text().splitlines() if line.strip() in TERMINAL_TYPES]
    assert len(states) == runs, tail(log)
    return states[0].strip() if runs == 1 else [s.strip() for s in states]


def test_automations_notify_a_webhook_of_failed_late_runs_and_events(server, hooks, tmp_path):
    # nothing to install without a channel: a named error, no traceback, nothing created (in this process: the
    # refusal comes before any request, so it needs neither the server nor a process of its own)
    from typer.testing import CliRunner

    from atoma_ops.cli import app

    refused = CliRunner().invoke(app, ["prefect", "automations", "install"])
    assert refused.exit_code == 2 and "give exactly one of --webhook-url" in refused.stderr, refused.output
    assert "Traceback" not in refused.output and isinstance(refused.exception, SystemExit), refused.exception
    assert server.api.post("/automations/filter", json={}).raise_for_status().json() == []

    first = atoma_ops(server, "prefect", "automations", "install", "--webhook-url", hooks.url)
    assert first.returncode == 0, first.stderr
    ours = {a["name"]: a for a in server.api.post("/automations/filter", json={}).json()}
    # one per event (8) and one for the scheduled deployments' runs
    assert len(ours) == 9 and all(name.startswith("atoma-ops: ") for name in ours)
    assert {"atoma-ops: atoma.balance.low", "atoma-ops: scheduled runs failed, crashed or late"} <= set(ours)
    again = atoma_ops(server, "prefect", "automations", "install", "--webhook-url", hooks.url)
    assert again.returncode == 0 and "updated" in again.stdout and "created" not in again.stdout
    assert {a["name"]: a["id"] for a in server.api.post("/automations/filter", json={}).json()} == {
        name: a["id"] for name, a in ours.items()
    }

    home = tmp_path / "localnet"
    LocalnetHome(home).init(seed=7)[0].close()
    # the user holds no USDC; a threshold of 1,000,000 USDC for it makes its balance short
    server.api.post("/variables/", json={"name": "atoma_ops_min_usdc", "value": {"user": 10**12}}).raise_for_status()
    settle = flow_run(server, deployment(server, "settlement-run", "flows/settlement.py:settlement_run"),
                      {"network": {"home": str(tmp_path / "no-such-localnet")}})
    balances = flow_run(server, deployment(server, "balance-watch", "flows/balance_watch.py:balance_watch"),
                        {"network": {"home": str(home)}})
    past = (datetime.now(timezone.utc) - timedelta(minutes=2)).isoformat()
    late = flow_run(server, deployment(server, "ledger-sync", "flows/ledger_sync.py:ledger_sync"), {},
                    {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": past}})

    # both runs in one process, one after the other, as a worker's subprocess runs one
    log = tmp_path / "runs.log"
    assert finished(execute(server, [settle, balances], log), log, runs=2) == ["FAILED", "COMPLETED"]

    failed_name = server.api.get(f"/flow_runs/{settle}").json()["name"]
    failed = hooks.wait_for("for the failed settlement run", lambda b: failed_name in b["subject"] and "Failed" in b["subject"])
    assert failed["subject"] == f"atoma-ops: run {failed_name} is Failed"
    late_name = server.api.get(f"/flow_runs/{late}").json()["name"]
    assert hooks.wait_for("for the late run", lambda b: late_name in b["subject"])["subject"].endswith("is Late")
    low = hooks.wait_for("for the short balance", lambda b: "atoma.balance.low" in b["subject"])
    assert low["subject"] == "atoma-ops: atoma.balance.low (user)"
    details = json.loads(low["body"].split("Details: ", 1)[1])
    assert (details["alias"], details["coin"], details["balance"], details["threshold"]) == ("user", "USDC", 0, 10**12)
    assert "less SUI (gas) or USDC than its threshold" in low["body"] and low["text"].startswith(low["subject"])
    # the other addresses were not short (no threshold for them; the localnet charges no gas)
    assert [b for b in hooks.bodies if "atoma.balance.low" in b["subject"] and b is not low] == []


def test_two_deployments_signing_for_one_address_take_turns(server, tmp_path):
    served = served_stacks(tmp_path / "localnet", 2)
    with opened(served.home) as chain:
        address = chain.wallet.resolve(NODE)
        transactions = lambda: chain.localnet.conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]  # noqa: E731
        before = transactions()
    name = f"signer-{address}"
    network = {"home": str(served.home)}
    settle = flow_run(server, deployment(server, "settlement-run", "flows/settlement.py:settlement_run"),
                      {"network": network, "nodes": [NODE], "idle_after_s": 0})
    reprice = flow_run(
        server, deployment(server, "register-and-subscribe-node", "flows/stages.py:register_and_subscribe_node"),
        {"network": network, "node": NODE, "task_small_id": served.task_small_id,
         "price_per_one_million_compute_units": 777},
    )

    # this test holds the address's slot first (as a long write of a third run would), so both runs must queue
    api = server.api
    api.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    lease = api.post("/v2/concurrency_limits/increment-with-lease",
                     json={"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": 60}).json()["lease_id"]
    logs = [tmp_path / "settle.log", tmp_path / "reprice.log"]
    started = datetime.now(timezone.utc).replace(tzinfo=None)  # the journal's clock: naive UTC
    procs = [execute(server, settle, logs[0]), execute(server, reprice, logs[1])]
    deadline = time.monotonic() + 120
    while True:  # until each run sits in a chain-writing task, waiting for the slot
        runs = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [settle, reprice]}}}).json()
        waiting = {r["flow_run_id"] for r in runs
                   if r["state_type"] == "RUNNING" and r["task_key"].startswith(WRITE_TASKS)}
        if waiting == {settle, reprice}:
            break
        assert time.monotonic() < deadline, f"runs not both waiting: {runs}\n{tail(logs[0])}\n{tail(logs[1])}"
        assert all(p.poll() is None for p in procs), f"{tail(logs[0])}\n{tail(logs[1])}"
        api.post(f"/v2/concurrency_limits/leases/{lease}/renew", json={"lease_duration": 60}).raise_for_status()
        time.sleep(0.5)
    assert api.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1  # ours, and neither run's
    with opened(served.home) as chain:
        assert chain.localnet.conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0] == before

    api.post("/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease}).raise_for_status()
    assert [finished(p, log) for p, log in zip(procs, logs)] == ["COMPLETED", "COMPLETED"]
    assert api.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 0  # every lease given back

    with opened(served.home) as chain:
        ln = chain.localnet
        assert sorted(t.stack_small_id for t in ln.list_tickets()) == sorted(served.stack_small_ids)
        assert {s.node_small_id: s.price_per_one_million_compute_units
                for s in ln.subscriptions(served.task_small_id)}[served.node_small_id] == 777
    # each run's writes, as the journal stamped them while holding the slot, never overlap the other run's
    from atoma_ops.ledger.api import Ledger, default_path

    rows = [r for r in Ledger(default_path(str(served.home))).actions().values()
            if r["sender"] == address and r["created_at"] >= started]  # not the kit's registration
    spans = {}
    for r in rows:
        run = "settle" if r["kind"] == "try_settle_stack" else "reprice"
        lo, hi = spans.get(run, (r["created_at"], r["updated_at"]))
        spans[run] = (min(lo, r["created_at"]), max(hi, r["updated_at"]))
    assert set(spans) == {"settle", "reprice"}, rows
    (a_lo, a_hi), (b_lo, b_hi) = spans["settle"], spans["reprice"]
    assert a_hi <= b_lo or b_hi <= a_lo, spans


# ------------------------------------------------------------------------------------- settlement's own alarms
async def _events(name: str, expected: int, timeout: float = 30) -> list[dict]:
    """The events called ``name`` on the session's Prefect API, once ``expected`` of them are persisted."""
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker

    drained = EventsWorker.drain_all()  # an awaitable when called from a running event loop
    if drained is not None and hasattr(drained, "__await__"):
        await drained
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            found = (await client.request(
                "POST", "/events/filter", json={"filter": {"event": {"name": [name]}}, "limit": 50}
            )).json()["events"]
            if len(found) >= expected or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.5)


def test_settlement_run_skips_what_pays_less_than_the_minimum_and_tells_claimable_tickets(tmp_path):
    from prefect.variables import Variable

    from atoma_ops.testing.served import advance_epoch
    from blocks import AtomaNetwork
    from flows import settlement_run

    served = served_stacks(tmp_path / "alerts-ln", 2)  # each stack: 2 requests x 15 units at 1 USDC / 1M units
    network = AtomaNetwork(home=str(served.home))
    asyncio.run(Variable.aset("atoma_ops_min_settle_value", 31, overwrite=True))
    try:
        # a settle would pay the node 30 base units, less than 31: skipped, and the table says why
        first = asyncio.run(settlement_run(idle_after_s=0, network=network))
    finally:
        asyncio.run(Variable.aunset("atoma_ops_min_settle_value"))
    assert sorted((a["action"], a["stack_small_id"], a["status"]) for a in first) == [
        ("try_settle", sid, "skipped") for sid in served.stack_small_ids
    ]
    assert {a["note"] for a in first} == {"pays 30 USDC base units, less than the minimum 31 (gas would cost more)"}
    with opened(served.home) as chain:
        assert chain.localnet.list_tickets() == []

    # without the Variable the localnet's minimum is 0: settled; one epoch later claimable, told, and claimed
    assert {a["status"] for a in asyncio.run(settlement_run(idle_after_s=0, network=network))
            if a["action"] == "try_settle"} == {"success"}
    advance_epoch(served.home)
    claims = asyncio.run(settlement_run(idle_after_s=0, network=network))
    assert sorted(a["stack_small_id"] for a in claims if a["action"].startswith("claim")) == served.stack_small_ids
    told = asyncio.run(_events("atoma.ticket.claimable", 2))
    ours = [e for e in told if e["resource"]["atoma.network"] == "alerts-ln"
            and e["payload"]["stack_small_id"] in served.stack_small_ids]
    assert sorted(e["resource"]["prefect.resource.id"] for e in ours) == [f"atoma.stack.{s}" for s in served.stack_small_ids]
    assert {e["payload"]["node"] for e in ours} == {NODE}
    assert all({"prefect.resource.id": f"atoma.node.{NODE}", "prefect.resource.role": "node",
                "prefect.resource.name": NODE} in e["related"] for e in ours)
