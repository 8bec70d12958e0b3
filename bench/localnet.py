"""Localnet throughput beside the raw SQLite commit rate of the same disk.

Usage: ``make bench`` (= ``.venv/bin/python bench/localnet.py``), or with options:

    .venv/bin/python bench/localnet.py [--stacks 300] [--raw-commits 2000] [--dir /some/disk] [--profile]

What it measures, in one run and in one temporary folder (so on one disk):

1. raw commits/s: a one-column table, the engine's pragmas (``journal_mode=WAL``, ``synchronous=FULL``), one
   ``INSERT`` per ``BEGIN IMMEDIATE … COMMIT`` — the floor of what any transaction costs on this disk.
2. localnet transactions/s for a mixed workload, end to end as a client sees it (the adapter's ``prepare``, the
   wallet's ``sign``, the engine's ``execute`` with signature verification): its setup (create tasks, register
   nodes, faucet mints) plus subscribe, acquire, try-settle and claim for ``--stacks`` stacks.

The two alternate for ``--rounds`` rounds (fsync latency drifts a lot on shared disks) and the medians are compared.
It prints both rates, their ratio (goal: >= 0.3), the CPU time per transaction and the sizes. Below the goal, or
with ``--profile``, it reruns the workload under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import hashlib
import io
import pstats
import shutil
import statistics
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any


from atoma_ops.protocol.events import small_id  # noqa: E402
from atoma_ops.chain.localnet.adapter import LocalnetChain  # noqa: E402
from atoma_ops.chain.localnet.engine import WAL_AUTOCHECKPOINT_PAGES, Localnet  # noqa: E402
from atoma_ops.wallet import Wallet  # noqa: E402
from atoma_ops.testing.drive import run_sync  # noqa: E402

GOAL = 0.3
NODES = ("node-1", "node-2", "node-3")
TASKS = 4  # NoSecurity, ConfidentialCompute, SamplingConsensus, NoSecurity


def raw_commit_rate(folder: Path, commits: int) -> float:
    path = folder / f"raw-{time.monotonic_ns()}.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")  # the localnet's own setting
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    start = time.perf_counter()
    for i in range(commits):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return commits / elapsed


def workload(folder: Path, wallet: Wallet, stacks: int) -> tuple[int, float, float, collections.Counter]:
    """Publish a fresh chain and run the mixed workload.

    Returns (transactions, seconds end to end, seconds inside the engine's execute/faucet_mint/advance_epoch,
    per-function counts).
    """
    chain_file = folder / f"chain-{time.monotonic_ns()}.sqlite"
    addr = wallet.aliases()
    counts: collections.Counter = collections.Counter()
    ln = Localnet.publish(chain_file, addr["admin"])
    chain = LocalnetChain(ln, wallet)
    engine = [0.0]
    clock = time.perf_counter

    def tx(sender: str, function: str, **args: Any):
        prepared = run_sync(chain.prepare(sender, function, args))
        signature = chain.sign(prepared)
        t0 = clock()
        result = ln.execute(prepared.tx_bytes, [signature])
        engine[0] += clock() - t0
        counts[function] += 1
        return result

    def mint(alias: str, amount: int) -> None:
        t0 = clock()
        ln.faucet_mint(addr[alias], amount)
        engine[0] += clock() - t0
        counts["faucet_mint"] += 1

    start = time.perf_counter()
    # setup
    for level in (0, 1, 2, 0):
        tx("admin", "create_task_entry", role=0, model_name="meta-llama/Llama-3.3-70B-Instruct", security_level=level,
           minimum_reputation_score=None, is_public=True)
    for alias in NODES:
        tx(alias, "register_node_entry")
    mint("user", 10**13)
    # subscribe (and re-price) every node on every task
    for task in range(1, TASKS + 1):
        for node, alias in enumerate(NODES, start=1):
            tx(alias, "subscribe_node_to_task", task_small_id=task, price_per_one_million_compute_units=node * 1_000)
            tx(alias, "update_node_subscription", task_small_id=task, price_per_one_million_compute_units=node * 900)
    # acquire
    selected: dict[int, tuple[int, int]] = {}  # stack -> (node, task)
    for k in range(stacks):
        task = 1 + k % TASKS
        if k % 50 == 49:
            mint("user", 10**9)  # a second coin: the next purchase merges coins
        r = tx("user", "acquire_new_stack_entry", task_small_id=task, num_compute_units=1_000_000, price=1_000_000)
        ev = r.event("StackCreatedEvent").parsed_json
        selected[small_id(ev["stack_small_id"])] = (small_id(ev["selected_node_id"]), task)
    # try-settle (confidential stacks go through claim_funds_for_stacks instead)
    proof = hashlib.blake2b(b"bench", digest_size=32).digest()
    for stack, (node, task) in selected.items():
        if task != 2:
            tx(NODES[node - 1], "try_settle_stack", node_small_id=node, stack_small_id=stack,
               num_claimed_compute_units=600_000, committed_stack_proof=proof, stack_merkle_leaf=proof)
    t0 = clock()
    ln.advance_epoch()
    engine[0] += clock() - t0
    counts["advance_epoch"] += 1
    # claim, per node in batches of up to 8
    by_node: dict[tuple[int, bool], list[int]] = collections.defaultdict(list)
    for stack, (node, task) in selected.items():
        by_node[(node, task == 2)].append(stack)
    for (node, confidential), ids in sorted(by_node.items()):
        for i in range(0, len(ids), 8):
            batch = ids[i : i + 8]
            if confidential:
                tx(NODES[node - 1], "claim_funds_for_stacks", node_small_id=node, stack_small_ids=batch,
                   num_compute_units_per_stack_to_claim=[600_000] * len(batch))
            else:
                tx(NODES[node - 1], "claim_funds", node_small_id=node, settled_ticket_ids=batch)
    elapsed = time.perf_counter() - start

    t = ln.total_usdc()
    assert t["minted"] == t["coins"] + t["fee_treasury"] + t["communal_treasury"] + t["collateral"], t
    assert ln.list_tickets() == [], "every ticket was claimed"
    ln.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(chain_file) + suffix).unlink(missing_ok=True)
    return sum(counts.values()), elapsed, engine[0], counts


def profile(folder: Path, wallet: Wallet, stacks: int, top: int = 20) -> str:
    """cProfile one workload run; a per-transaction breakdown by area, then the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    txs, _, _, _ = workload(folder, wallet, stacks)
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}

    def cum(file_part: str, name: str) -> float:
        return sum(v[3] for k, v in raw.items() if file_part in k[0] and k[2] == name)

    sql_by_caller: collections.Counter = collections.Counter()
    for key, value in raw.items():
        if key[2] in ("<method 'execute' of 'sqlite3.Connection' objects>",
                      "<method 'executemany' of 'sqlite3.Connection' objects>"):
            for caller, cvalue in value[4].items():
                sql_by_caller[f"{Path(caller[0]).name}:{caller[2]}"] += cvalue[3]
    begin_commit = sql_by_caller.pop("engine.py:_write", 0.0)
    rows = [
        ("client: adapter.prepare (badge/coin lookups, encoding)", cum("adapter.py", "prepare")),
        ("client: Wallet.sign", cum("wallet.py", "sign")),
        ("engine: Localnet.execute + faucet_mint + advance_epoch (all below)",
         cum("engine.py", "execute") + cum("engine.py", "faucet_mint") + cum("engine.py", "advance_epoch")),
        ("  BEGIN IMMEDIATE / COMMIT / ROLLBACK (fsync)", begin_commit),
        ("  other SQL statements", sum(sql_by_caller.values())),
        ("  signature verification", cum("wallet.py", "verify_signature")),
        ("  json encode/decode (all callers, client included)",
         cum("json/__init__.py", "dumps") + cum("json/__init__.py", "loads")),
    ]
    out = io.StringIO()
    out.write(f"{txs} transactions; ms per transaction (profiled, so inflated):\n")
    for label, seconds in rows:
        out.write(f"  {1000 * seconds / txs:7.3f}  {label}\n")
    out.write("  SQL time by calling function (ms/tx): " + ", ".join(
        f"{name} {1000 * t / txs:.3f}" for name, t in sql_by_caller.most_common(8)) + "\n\n")
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=300, help="stacks bought, settled and claimed (default 300)")
    parser.add_argument("--raw-commits", type=int, default=2000,
                        help="raw SQLite commits per measurement (default 2000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating raw/localnet rounds; medians are used (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="folder to run in (default: a new temp folder)")
    parser.add_argument("--profile", action="store_true", help="always print a cProfile of the workload")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="atoma-bench-", dir=args.dir))
    try:
        wallet = Wallet.create(folder / "wallet", ["admin", "user", *NODES], env_alias="atoma-localnet")
        raws: list[float] = []
        rates: list[float] = []
        engine_rates: list[float] = []
        cpu_ms: list[float] = []
        # Disks are noisy (fsync latency varies several-fold over seconds): alternate the two measurements.
        for _ in range(args.rounds):
            raws.append(raw_commit_rate(folder, args.raw_commits))
            cpu0 = time.process_time()
            txs, elapsed, in_engine, counts = workload(folder, wallet, args.stacks)
            cpu_ms.append((time.process_time() - cpu0) * 1000 / txs)
            rates.append(txs / elapsed)
            engine_rates.append(txs / in_engine)
        raws.append(raw_commit_rate(folder, args.raw_commits))
        raw, tps, engine_tps = statistics.median(raws), statistics.median(rates), statistics.median(engine_rates)
        ratio = tps / raw
        print(f"folder:               {folder}")
        print(f"raw SQLite commits/s: {raw:9.0f}  median of {len(raws)} x {args.raw_commits} commits "
              f"(WAL, synchronous=FULL): {', '.join(f'{r:.0f}' for r in raws)}")
        print(f"localnet tx/s:        {tps:9.0f}  median of {args.rounds} runs of {txs} transactions "
              f"({args.stacks} stacks, {TASKS} tasks, {len(NODES)} nodes): {', '.join(f'{r:.0f}' for r in rates)}")
        print(f"ratio:                {ratio:9.2f}  (goal >= {GOAL})  {'OK' if ratio >= GOAL else 'BELOW GOAL'}")
        print(f"engine-only tx/s:     {engine_tps:9.0f}  ratio {engine_tps / raw:.2f}  (time inside Localnet.execute/"
              f"faucet_mint/advance_epoch only: no client-side prepare and signing): "
              f"{', '.join(f'{r:.0f}' for r in engine_rates)}")
        print(f"per transaction:      {1000 / tps:.3f} ms localnet (of which CPU {statistics.median(cpu_ms):.3f} ms) "
              f"vs {1000 / raw:.3f} ms per raw commit")
        print("transactions per run: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if args.profile or ratio < GOAL:
            print("\n--- cProfile of the workload (rerun) ---")
            print(profile(folder, wallet, args.stacks))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
