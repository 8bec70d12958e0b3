"""Journal benchmark: the per-intent cost of the intent journal on PostgreSQL beside the DuckDB ledger's, in one run.

    .venv/bin/python -m bench.journal                  # 300 intents, 3 rounds
    .venv/bin/python -m bench.journal --intents 1000 --rounds 5

Each intent goes through what ``atoma_ops.journal.execute_intents`` asks of its store, with no chain in between
(the chain's cost is the same whichever store journals it):

1. **register** — look the key up (``actions([key])``): is it journaled already?
2. **commit-signed** — claim the key with the signed bytes and digest (``claim_actions``, one transaction, committed
   before the bytes are submitted);
3. **mark-submitted** — nothing to write: a ``pending`` row already means "maybe submitted" (a crash after it is
   resolved by digest), so submitting costs the journal no write;
4. **mark-done** — record the outcome (``record_actions``).

Two shapes: one intent at a time (a try-settle, a registration: three store calls per intent) and batches of 100
(a claim batch: three store calls per batch). PostgreSQL is a throwaway cluster from Debian's binaries on
127.0.0.1 with ``fsync`` on (a commit costs what it costs in production); DuckDB is a ledger file in a temporary
folder of the same disk. Rounds alternate between the stores and the medians are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from atoma_ops.journal_postgres import PostgresJournal
from atoma_ops.ledger import Ledger
from atoma_ops.testing.postgres import PgCluster

STEPS = ("register", "commit-signed", "mark-submitted", "mark-done")


def _pending(key: str) -> dict:
    tx = hashlib.blake2b(key.encode(), digest_size=32).digest() * 8  # ~256 bytes, like a small Sui transaction
    return {
        "idempotency_key": key, "kind": "try_settle_stack", "status": "pending", "stack_small_id": 1,
        "stack_small_ids": [1], "sender": "0x" + "ab" * 32, "args": {"stack_small_id": 1},
        "signed_tx_bytes": tx, "signature": "A" * 132, "digest": hashlib.sha256(tx).hexdigest(), "attempt": True,
    }


def _done(key: str) -> dict:
    return {"idempotency_key": key, "kind": "try_settle_stack", "status": "success", "stack_small_id": 1,
            "stack_small_ids": [1], "digest": hashlib.sha256(key.encode()).hexdigest()}


def run_one_at_a_time(store, prefix: str, n: int) -> dict[str, float]:
    """Seconds per step over ``n`` intents, one intent at a time."""
    spent = dict.fromkeys(STEPS, 0.0)
    for i in range(n):
        key = f"{prefix}:{i}"
        t0 = time.perf_counter()
        assert key not in store.actions([key])
        t1 = time.perf_counter()
        assert store.claim_actions([_pending(key)]) == [key]
        t2 = time.perf_counter()
        t3 = time.perf_counter()  # mark-submitted: no write
        store.record_actions([_done(key)])
        t4 = time.perf_counter()
        for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[step] += dt
    return spent


def run_batched(store, prefix: str, n: int, batch: int) -> dict[str, float]:
    spent = dict.fromkeys(STEPS, 0.0)
    for start in range(0, n, batch):
        keys = [f"{prefix}:{i}" for i in range(start, min(n, start + batch))]
        t0 = time.perf_counter()
        assert not store.actions(keys)
        t1 = time.perf_counter()
        assert len(store.claim_actions([_pending(k) for k in keys])) == len(keys)
        t2 = time.perf_counter()
        t3 = time.perf_counter()
        store.record_actions([_done(k) for k in keys])
        t4 = time.perf_counter()
        for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[step] += dt
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intents", type=int, default=300, help="intents per store per round (default 300)")
    parser.add_argument("--batch", type=int, default=100, help="intents per batch in the batched shape (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="atoma-bench-journal-"))
    cluster = PgCluster(fsync=True).start()
    try:
        ledger = Ledger(work / "ledger.duckdb")
        ledger._ensure()
        pg = PostgresJournal(cluster.create_database("bench"))
        pg.record_actions([_done("warm-up")])
        ledger.record_actions([_done("warm-up")])
        stores = {"PostgreSQL": pg, "DuckDB": ledger}
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for name, store in (stores.items() if r % 2 == 0 else reversed(stores.items())):
                results.setdefault((name, "one"), []).append(run_one_at_a_time(store, f"one:{r}", args.intents))
                results.setdefault((name, "batch"), []).append(run_batched(store, f"batch:{r}", args.intents, args.batch))
        print(f"intent journal, per intent (median of {args.rounds} rounds, {args.intents} intents each; "
              f"PostgreSQL {cluster.bin.parent.name} on 127.0.0.1, fsync on; DuckDB file on the same disk)")
        for shape, title in (("one", "one intent at a time"), ("batch", f"batches of {args.batch}")):
            print(f"\n  {title}")
            print(f"  {'step':<16}{'PostgreSQL ms':>15}{'DuckDB ms':>12}{'DuckDB/PG':>12}")
            totals = {}
            for step in (*STEPS, "total"):
                per = {}
                for name in stores:
                    rounds = results[(name, shape)]
                    values = [sum(x.values()) if step == "total" else x[step] for x in rounds]
                    per[name] = statistics.median(values) / args.intents * 1000
                totals[step] = per
                pg_ms, duck_ms = per["PostgreSQL"], per["DuckDB"]
                ratio = f"{duck_ms / pg_ms:.1f}x" if pg_ms > 0.01 else "—"
                print(f"  {step:<16}{pg_ms:>15.3f}{duck_ms:>12.3f}{ratio:>12}")
            t = totals["total"]
            print(f"  → {1000 / t['PostgreSQL']:.0f} intents/s on PostgreSQL, {1000 / t['DuckDB']:.0f} on DuckDB")
        pg.close()
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
