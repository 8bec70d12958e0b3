"""Scale-out benchmark: settlement throughput (stacks settled and claimed per minute) with 1, 2 and 4 workers against
one Prefect server on PostgreSQL, printed as a curve, beside the per-intent cost of the intent journal on PostgreSQL
and on DuckDB (``bench/journal.py``'s measurement, on the same PostgreSQL).

    .venv/bin/python -m bench.scale_out                     # 48 stacks per point, workers 1 2 4
    .venv/bin/python -m bench.scale_out --stacks 96 --workers 1 2 4 8

Set-up (``tests/flows/multi_host.py``, the harness of the multi-host test, without network namespaces): a throwaway
PostgreSQL (Debian's binaries, fsync on) holding Prefect's database and the intent journal, ``prefect server start``
on it, and as many ``prefect worker`` processes as the largest point, worker ``i`` taking only the queue ``host-i``
(each a GPU host of its own). For each point W: a fresh localnet whose ``--stacks`` stacks are split over W nodes
(each node's stacks served with recorded responses into its host's own store), a fresh journal database, and W
``settlement-run`` deployments (one per host, ``nodes: [node-i]``, queue ``host-i``, built from
``prefect.hosts.yaml``'s definition). Timed: W settlement runs at once (every stack idle: try-settle), one epoch
advance (not timed), W runs at once again (claim); from the first run's creation to the last one's end, so each
run's process start on its worker counts, as it would in production. Every stack must end claimed, else exit 1.

The workers share this machine's cores: on a small machine the curve shows how much of a run is fixed cost (a
Python process and Prefect's start per run) that several hosts overlap, not how GPU hosts would scale. Numbers on a
loaded machine are noisy; the runs of one invocation are comparable with each other.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from atoma_ops.journal_postgres import PostgresJournal
from atoma_ops.ledger import Ledger
from atoma_ops.testing import served as kit
from bench.journal import run_batched, run_one_at_a_time
from tests.flows.multi_host import ROOT, Cluster, host_home, operator_chain, record_served

REQUESTS_PER_STACK = 2


def _deployments_file(folder: Path, workers: int) -> Path:
    """``prefect.hosts.yaml``'s settlement-run definition, one deployment per host (no schedule: the bench runs
    them)."""
    spec = yaml.safe_load((ROOT / "prefect.hosts.yaml").read_text())
    base = {k: v for k, v in spec["definitions"]["settlement_run"].items() if k != "schedules"}
    spec["deployments"] = [
        {**base, "name": f"settlement-run-host-{i}", "parameters": {"nodes": [f"node-{i}"]},
         "work_pool": {"name": "atoma-ops", "work_queue_name": f"host-{i}"}}
        for i in range(1, workers + 1)
    ]
    path = folder / "prefect.bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _round(cluster: Cluster, params: dict[int, dict]) -> tuple[float, float]:
    """Runs of each host's deployment at once: seconds from the first creation to the last end, and the longest
    run's own time (Prefect's run time: from its flow starting to its end, without the worker's pick-up and process
    start)."""
    t0 = time.perf_counter()
    ids = [cluster.run(f"settlement-run/settlement-run-host-{i}", p) for i, p in params.items()]
    runs = cluster.wait_runs(ids, timeout=900)
    wall = time.perf_counter() - t0
    bad = [r["state"]["message"] for r in runs.values() if r["state_type"] != "COMPLETED"]
    if bad:
        raise SystemExit(f"a settlement run did not complete: {bad[0]}\n{cluster.tails()}")
    return wall, max(r["total_run_time"] for r in runs.values())


def point(cluster: Cluster, folder: Path, workers: int, stacks: int) -> dict:
    """One point of the curve: ``stacks`` stacks over ``workers`` hosts, settled then claimed."""
    nodes = [f"node-{i}" for i in range(1, workers + 1)]
    shared = folder / "shared"
    chain = operator_chain(shared, nodes, stacks // workers)
    homes = {}
    for i, node in enumerate(nodes, 1):
        homes[i] = host_home(shared, folder / f"host-{i}" / "home")
        record_served(homes[i], chain, node, REQUESTS_PER_STACK)
    journal = cluster.pg.create_database(f"journal_w{workers}")
    params = {i: {"network": {"home": str(homes[i]), "journal_url": journal}, "idle_after_s": 0} for i in homes}
    settle, settle_run = _round(cluster, params)
    kit.advance_epoch(shared)
    claim, claim_run = _round(cluster, params)
    with kit.opened(shared) as ch:
        left = ch.localnet.list_stacks() + ch.localnet.list_tickets()
    if left:
        raise SystemExit(f"{workers} workers: {len(left)} stacks or tickets left unclaimed")
    n = len(nodes) * (stacks // workers)
    return {"workers": workers, "stacks": n, "settle_s": settle, "claim_s": claim, "run_s": settle_run + claim_run,
            "per_min": n / (settle + claim) * 60}


def journal_costs(cluster: Cluster, folder: Path, intents: int) -> dict[str, dict[str, float]]:
    """``bench/journal.py``'s two shapes, one round each, on this PostgreSQL and a DuckDB ledger: ms per intent."""
    pg = PostgresJournal(cluster.pg.create_database("journal_cost"))
    ledger = Ledger(folder / "journal-cost.duckdb")
    ledger._ensure()
    out: dict[str, dict[str, float]] = {}
    try:
        for name, store in (("PostgreSQL", pg), ("DuckDB", ledger)):
            one = run_one_at_a_time(store, "one", intents)
            batch = run_batched(store, "batch", intents, 100)
            out[name] = {"one": sum(one.values()) / intents * 1000, "batch": sum(batch.values()) / intents * 1000}
    finally:
        pg.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stacks", type=int, default=48, help="stacks per point, split over its workers (default 48)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="the points (default 1 2 4)")
    parser.add_argument("--intents", type=int, default=60, help="intents per shape for the journal's cost (default 60)")
    args = parser.parse_args()
    most = max(args.workers)
    folder = Path(tempfile.mkdtemp(prefix="atoma-bench-scale-"))
    cluster = Cluster(folder, [f"host-{i}" for i in range(1, most + 1)], netns=False, fsync=True)
    try:
        cluster.start().wait()
        deploy = cluster.deploy("--prefect-file", str(_deployments_file(folder, most)), "--all")
        for i in range(1, most + 1):
            cluster.worker(f"host-{i}", [f"host-{i}"], None)
        if deploy.wait(300) != 0:
            raise SystemExit(f"prefect deploy failed:\n{cluster.tails()}")
        pg_version = cluster.pg.bin.parent.name
        points = []
        for w in args.workers:
            p = point(cluster, folder / f"w{w}", w, args.stacks)
            points.append(p)
            print(f"  {w} worker(s): {p['stacks']} stacks, settle {p['settle_s']:.1f} s + claim {p['claim_s']:.1f} s"
                  f" -> {p['per_min']:.0f} stacks/min", flush=True)
        costs = journal_costs(cluster, folder, args.intents)
    finally:
        cluster.close()
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\nsettlement throughput, one Prefect server on PostgreSQL {pg_version} (fsync on), "
          f"{REQUESTS_PER_STACK} requests a stack; workers as processes of this machine")
    base = points[0]["per_min"]
    top = max(p["per_min"] for p in points)
    print(f"  {'workers':>7}  {'stacks':>6}  {'settle s':>8}  {'claim s':>7}  {'in runs s':>9}  {'stacks/min':>10}"
          f"  {'vs first':>8}")
    for p in points:
        bar = "#" * max(1, round(p["per_min"] / top * 40))
        print(f"  {p['workers']:>7}  {p['stacks']:>6}  {p['settle_s']:>8.1f}  {p['claim_s']:>7.1f}  {p['run_s']:>9.1f}  "
              f"{p['per_min']:>10.0f}  {p['per_min'] / base:>7.2f}x  {bar}")
    print("  (settle, claim: wall from creating the runs to the last one's end; in runs: the longest run's own time,"
          " both rounds, without the worker's pick-up and process start)")
    print(f"\nintent journal, ms per intent ({args.intents} intents, one round; bench/journal.py for the full run)")
    print(f"  {'shape':<22}{'PostgreSQL':>12}{'DuckDB':>10}")
    for shape, title in (("one", "one at a time"), ("batch", "batches of 100")):
        print(f"  {title:<22}{costs['PostgreSQL'][shape]:>12.2f}{costs['DuckDB'][shape]:>10.2f}")
    print("\nNoisy on a small, shared machine: compare the points of one run, not runs of different days.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
