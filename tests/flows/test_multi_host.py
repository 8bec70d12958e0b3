"""One operator, two GPU hosts, for real (``tests/flows/multi_host.py``): PostgreSQL from Debian's binaries; a
``prefect server start`` on it; host A and host B each in a network namespace of its own (where the machine allows;
else separate processes — the test prints which), each with its own home, node store, ``PREFECT_HOME``, node server
and worker on its own work queue; a third worker on the machine's side takes the queue ``shared`` (the chain-only
runs: ledger-sync, the ledger's single writer). One localnet chain file is shared by both hosts.

Node-1 is served on host A and node-2 on host B through their node servers (the buyer sends over the hosts'
network). Then both hosts' settlement deployments (``prefect.hosts.yaml``) run at the same time, with the intent
journal on PostgreSQL: try-settle, a dispute window, then claim. Every intent executes once — each journal key has
one digest, each digest one executed transaction, and the chain executed no node transaction the journal does not
hold — every ticket is claimed once, and the ledger, synced from both nodes, reconciles without drift.

The pool's job command is Prefect's engine itself (``Cluster(engine_command=True)``: one Python start-up less per
run than the process worker's default workspace supervisor, which ``test_deployment`` keeps); ``ledger-sync`` is
deployed through the API (its queue in ``prefect.yaml`` is checked by ``test_deployment``).
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from atoma_ops.ledger.api import Ledger
from atoma_ops.testing import served as kit
from atoma_ops.testing.netns import Hosts
from tests.flows.multi_host import (
    PRICE,
    UNITS_PER_REQUEST,
    Cluster,
    chain_transactions,
    host_home,
    serve_stacks,
    operator_chain,
)

HOSTS = {"host-a": "node-1", "host-b": "node-2"}
STACKS_PER_NODE = 3
REQUESTS_PER_STACK = 2
UNITS = 1_000


def _journal(url: str) -> dict[str, dict]:
    with psycopg.connect(url) as con:
        cur = con.execute("SELECT idempotency_key, status, digest, sender, attempts FROM chain_actions")
        return {k: {"status": s, "digest": d, "sender": snd, "attempts": a} for k, s, d, snd, a in cur.fetchall()}


def _chain(home: Path) -> dict:
    with kit.opened(home) as chain:
        ln = chain.localnet
        return {
            "stacks": sorted(s.stack_small_id for s in ln.list_stacks()),
            "tickets": {t.stack_small_id: t for t in ln.list_tickets()},
            "balances": {a: ln.usdc_balance(chain.wallet.resolve(a)) for a in ("user", *HOSTS.values())},
            "addresses": {a: chain.wallet.resolve(a) for a in HOSTS.values()},
        }


@pytest.mark.slow
def test_two_hosts_settle_at_once_every_intent_once_and_the_ledger_reconciles(tmp_path):
    shared = tmp_path / "shared"
    t0 = time.monotonic()
    mark = lambda what: print(f"{time.monotonic() - t0:6.1f} s  {what}", flush=True)  # noqa: E731
    with Cluster(tmp_path, list(HOSTS), engine_command=True).start() as cluster:
        print(f"multi-host mode: {cluster.mode}" + (f" (namespaces unavailable: {cluster.hosts.why})"
                                                    if cluster.hosts.why else ""))
        # while the server migrates its PostgreSQL database: the chain, the hosts' homes, their node servers
        chain = operator_chain(shared, list(HOSTS.values()), STACKS_PER_NODE, UNITS)
        mark("chain built")
        homes = {h: host_home(shared, tmp_path / h / "home") for h in HOSTS}
        nodes = {h: cluster.node_server(h, homes[h], n) for h, n in HOSTS.items()}
        mark("node servers up")
        cluster.wait()
        results = tmp_path / "results"  # the shared result storage every worker writes to
        block = cluster.server.api.post("/block_documents/", json={
            "name": "atoma-results", "data": {"basepath": str(results)},
            **_block_type(cluster, "local-file-system"),
        }).raise_for_status().json()
        mark("server up, pool made")
        # the hosts' deployments as an operator makes them (``prefect deploy``); ledger-sync's through the API (which
        # queue prefect.yaml gives it is test_deployment's: here only which worker takes that queue matters)
        deploys = [cluster.deploy("--prefect-file", "prefect.hosts.yaml", "--all")]
        cluster.deployment("ledger-sync", "flows/ledger_sync.py:ledger_sync", "shared")
        storage = {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "local-file-system/atoma-results"}
        for host in HOSTS:
            cluster.worker(host, [host], host, **storage)
        cluster.worker("control", ["shared"], None, **storage)

        mark("workers starting")
        # each node serves its stacks through its own server, reached over the hosts' network
        for host, node in HOSTS.items():
            charged = serve_stacks(nodes[host]["url"], shared / "client.yaml", nodes[host]["address"],
                                   chain.stacks[node], REQUESTS_PER_STACK)
            assert charged == STACKS_PER_NODE * REQUESTS_PER_STACK * UNITS_PER_REQUEST
        mark("served")
        for proc in deploys:
            assert proc.wait(180) == 0, cluster.tails()
        mark("deployed")
        deployments = {d["name"]: d for d in cluster.server.api.post("/deployments/filter", json={}).json()}
        for host, node in HOSTS.items():
            assert deployments[f"settlement-run-{host}"]["work_queue_name"] == host
            assert deployments[f"settlement-run-{host}"]["parameters"] == {"nodes": [node]}
            assert deployments[f"attestation-watch-{host}"]["work_queue_name"] == host

        # both hosts settle at once (every stack idle), then, after the dispute window, claim at once; with the
        # claims, the ledger's single writer (the shared queue's worker, on the machine's side) reads both nodes'
        # usage over HTTP: its home has the chain and the operator's wallet (the nodes' keys sign the reads), no
        # node store
        control = host_home(shared, tmp_path / "control" / "home")
        ledger_path = tmp_path / "control" / "ledger.duckdb"
        sync_params = {"network": {"home": str(control)}, "ledger": {"path": str(ledger_path)},
                       "node_urls": [nodes[h]["url"] for h in HOSTS]}

        def both(*, sync: bool = False) -> dict[str, dict]:
            ids = {cluster.run(f"settlement-run/settlement-run-{h}",
                               {"network": {"home": str(homes[h])}, "idle_after_s": 0}): h for h in HOSTS}
            if sync:
                ids[cluster.run("ledger-sync/ledger-sync", sync_params)] = "shared"
            runs = cluster.wait_runs(list(ids))
            for run_id, run in runs.items():
                assert run["state_type"] == "COMPLETED", f"{run['state']}\n{cluster.tails()}"
                assert run["work_queue_name"] == ids[run_id]
            return {ids[i] if ids[i] != "shared" else "sync": r for i, r in runs.items()}

        before = _chain(shared)
        settle = both()
        mark("settle runs done")
        settled = _chain(shared)
        assert sorted(settled["tickets"]) == sorted(s for n in HOSTS.values() for s in chain.stacks[n])
        used = REQUESTS_PER_STACK * UNITS_PER_REQUEST
        assert {t.num_claimed_compute_units for t in settled["tickets"].values()} == {used}
        assert kit.advance_epoch(shared) == 1
        claim = both(sync=True)
        sync = claim.pop("sync")
        mark("claim and sync runs done")
        after = _chain(shared)
        for host, node in HOSTS.items():  # each worker ran its own host's runs, never the other's
            log = cluster.logs[host].read_text(errors="replace")
            other = next(h for h in HOSTS if h != host)
            assert settle[host]["id"] in log and claim[host]["id"] in log
            assert settle[other]["id"] not in log and claim[other]["id"] not in log

        # every ticket claimed once: the node was paid for what it served, the user refunded the rest
        fee = used * PRICE // 1_000_000
        assert (fee, UNITS - fee) == (38, 962)
        assert after["stacks"] == [] and after["tickets"] == {}
        for node in HOSTS.values():
            assert after["balances"][node] == before["balances"][node] + STACKS_PER_NODE * fee
        assert after["balances"]["user"] == before["balances"]["user"] + len(HOSTS) * STACKS_PER_NODE * (UNITS - fee)

        # every intent executed once: one journal row per key, one digest per row, one executed tx per digest, and
        # no transaction of a node's address that the journal does not hold
        journal = _journal(cluster.journal_url)
        settle_keys = {f"try_settle_stack:{s}" for n in HOSTS.values() for s in chain.stacks[n]}
        assert settle_keys <= set(journal)
        assert {k: r["status"] for k, r in journal.items()} == dict.fromkeys(journal, "success")
        assert all(r["attempts"] == 1 for r in journal.values())
        digests = [r["digest"] for r in journal.values()]
        assert len(set(digests)) == len(digests)
        txs = chain_transactions(shared)[chain.setup_txs:]
        by_digest = {t["digest"]: t for t in txs}
        assert len(by_digest) == len(txs)
        assert sorted(by_digest) == sorted(digests)
        assert {t["status"] for t in txs} == {"success"}
        senders = set(settled["addresses"].values())
        assert {r["sender"] for r in journal.values()} == senders
        claims = [k for k in journal if k not in settle_keys]
        assert claims and all(k.startswith("claim") for k in claims)

        # the results of the runs on both hosts are in the shared result storage, readable here: each host's
        # settlement run settled its own node's stacks, then claimed them
        for host, node in HOSTS.items():
            for run, action in ((settle[host], "try_settle"), (claim[host], "claim (ticket)")):
                flow_run = cluster.server.api.get(f"/flow_runs/{run['id']}").json()
                assert flow_run["state"]["data"]["storage_block_id"] == block["id"], flow_run["state"]
                rows = [r for r in _result(results, flow_run) if r["action"] == action]
                assert sorted(r["stack_small_id"] for r in rows) == sorted(chain.stacks[node]), (host, action, rows)

        # the ledger's sync ran on the control host's worker, with no node store: every request came over HTTP (its
        # result, written by that worker into the shared result storage, is read here)
        assert sync["id"] in cluster.logs["control"].read_text()
        assert not (control / "nodes").exists()
        report = _result(results, cluster.server.api.get(f"/flow_runs/{sync['id']}").json())
        assert report["usage_rows"] == len(HOSTS) * STACKS_PER_NODE * REQUESTS_PER_STACK
        assert [i["rows_added"] for i in report["node_imports"]] == [STACKS_PER_NODE * REQUESTS_PER_STACK] * 2
        mark("checked")

    mark("cluster stopped")
    ledger = Ledger(ledger_path)
    usage = ledger.usage()
    assert len(usage) == len(HOSTS) * STACKS_PER_NODE * REQUESTS_PER_STACK
    assert usage.groupby("stack_small_id")["actual_units"].sum().to_dict() == {
        s: used for n in HOSTS.values() for s in chain.stacks[n]
    }
    with kit.opened(shared) as ch:
        report = asyncio.run(ledger.reconcile(ch))
    assert report.ok, report.drift.to_string()


def _stored(results: Path, data: dict) -> Path:
    """Where a persisted result is: under the shared result storage's folder."""
    path = Path(data["storage_key"]) if Path(data["storage_key"]).is_absolute() else results / data["storage_key"]
    assert path.is_relative_to(results), path
    return path


def _result(results: Path, flow_run: dict):
    """A finished flow run's result, read from the shared result storage where its worker persisted it."""
    from prefect.serializers import Serializer

    data = flow_run["state"]["data"]
    return Serializer(type=data["serializer"]["type"]).loads(_stored(results, data).read_bytes())


def _block_type(cluster: Cluster, slug: str) -> dict:
    """The ids a block document of type ``slug`` needs (the type and its latest schema, registered by the server)."""
    api = cluster.server.api
    block_type = api.get(f"/block_types/slug/{slug}").raise_for_status().json()
    schema = api.post("/block_schemas/filter", json={"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}},
                                                      "limit": 1}).raise_for_status().json()[0]
    return {"block_type_id": block_type["id"], "block_schema_id": schema["id"]}


def test_sqlite_follows_the_link_to_the_shared_chain(tmp_path):
    """The hosts' homes reach the shared chain through a link: SQLite must keep its WAL beside the real file, or two
    hosts would each write a WAL of their own and lose each other's writes."""
    real, link = tmp_path / "chain.sqlite", tmp_path / "home" / "chain.sqlite"
    link.parent.mkdir()
    link.symlink_to(real)
    con = sqlite3.connect(real)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x)")
    other = sqlite3.connect(link)
    other.execute("INSERT INTO t VALUES (1)")
    other.commit()
    assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert (tmp_path / "chain.sqlite-wal").exists() and not (link.parent / "chain.sqlite-wal").exists()
    con.close()
    other.close()


def test_hosts_get_namespaces_of_their_own_and_leave_none_behind():
    """Each host in a namespace of its own, reaching the machine's side over the bridge, not through loopback; all
    of it gone after ``close``. Where namespaces cannot be made the hosts are processes on 127.0.0.1 and say why."""
    def namespaces() -> set[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    hosts = Hosts.open(["a", "b"])
    try:
        print(f"multi-host mode: {hosts.mode} {hosts.why}")
        if hosts.mode == "processes":
            assert hosts.why and {h.address for h in hosts.hosts} == {"127.0.0.1"}
            return
        a, b = hosts["a"], hosts["b"]
        assert {a.netns, b.netns} <= namespaces() and a.address != b.address != hosts.server_address
        with socket.socket() as listener:  # the machine's side, on the bridge's address
            listener.bind((hosts.server_address, 0))
            listener.listen()
            port = listener.getsockname()[1]
            probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()"
            reach = subprocess.run(b.wrap([sys.executable, "-c", probe, hosts.server_address, str(port)]),
                                   capture_output=True, text=True)
            assert reach.returncode == 0, reach.stderr
            # the machine's loopback is not the host's: nothing listens on the host's own 127.0.0.1
            inside = subprocess.run(b.wrap([sys.executable, "-c", probe, "127.0.0.1", str(port)]),
                                    capture_output=True, text=True)
            assert inside.returncode != 0 and "refused" in inside.stderr.lower()
    finally:
        hosts.close()
    assert not {h.netns for h in hosts.hosts} & namespaces()
