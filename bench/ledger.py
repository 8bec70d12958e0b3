"""Ledger benchmark: usage appends against DuckDB's raw DataFrame append, event ingest, the earnings queries.

    .venv/bin/python bench/ledger.py                       # 1,000,000 usage rows, 100,000 events, 3 rounds
    .venv/bin/python bench/ledger.py --rows 100000 --events 10000 --rounds 1   # quick run

All in one temporary folder (one disk), one process:

1. usage rows/s — ``Ledger.append_usage(df)`` (open, schema check, one INSERT … SELECT with casts into the keyed
   ``usage`` table with its CHECKs, commit, close) against DuckDB's raw ``con.append(table, df)`` into a bare table
   of the same columns in a fresh file (open, append, close). The same DataFrames, alternating rounds, medians.
   Both as one batch of N rows and as 10 batches of N/10. Goal: ledger ≥ 0.5 × raw.
2. events/s — ``Ledger.sync`` from a synthetic in-memory Chain port (Sui's parsed-JSON shapes; stacks bought,
   settled, attested, claimed, with consistent USDC balance changes), batches of 1000 events.
3. query time over those rows — earnings by node / task / epoch / epoch_node, stack utilisation (joins the usage
   rows), usdc_flow, the USDC checks.
4. sizes — the ledger file, rows per table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd


from atoma_ops.chain.types import ChainEvent, DbConfig, EventId, EventPage, TxResult  # noqa: E402
from atoma_ops.ledger import Ledger  # noqa: E402
from atoma_ops.protocol import money  # noqa: E402

PACKAGE = "0x" + "ab" * 32
USAGE_DDL = """CREATE TABLE usage_raw (stack_small_id BIGINT, request_index BIGINT, prompt_tokens BIGINT,
 completion_tokens BIGINT, estimated_units BIGINT, actual_units BIGINT, latency_ms DOUBLE, payload_hash BLOB,
 response_hash BLOB, served_at_ms BIGINT)"""


# ----------------------------------------------------------------------------------------------- usage rows
def usage_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    per_stack = 1000
    stacks = np.arange(n) // per_stack + 1
    index = np.arange(n) % per_stack
    raw = rng.bytes(64 * n)
    payload = [raw[i * 64 : i * 64 + 32] for i in range(n)]
    response = [raw[i * 64 + 32 : i * 64 + 64] for i in range(n)]
    prompt = rng.integers(10, 2000, n)
    completion = rng.integers(1, 1000, n)
    return pd.DataFrame({
        "stack_small_id": stacks.astype("int64"),
        "request_index": index.astype("int64"),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "estimated_units": prompt + completion + 3,
        "actual_units": prompt + completion,
        "latency_ms": rng.random(n) * 900 + 50,
        "payload_hash": payload,
        "response_hash": response,
        "served_at_ms": np.int64(1_700_000_000_000) + np.arange(n, dtype="int64"),
    })


def time_raw(path: Path, frames: list[pd.DataFrame]) -> float:
    for suffix in ("", ".wal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    con.execute(USAGE_DDL)
    con.close()
    gc.collect()
    t = time.perf_counter()
    for df in frames:
        con = duckdb.connect(str(path))
        con.append("usage_raw", df)
        con.close()
    return time.perf_counter() - t


def time_ledger(path: Path, frames: list[pd.DataFrame]) -> float:
    for suffix in ("", ".wal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    ledger = Ledger(path)
    ledger._ensure()  # schema creation is not part of an append
    gc.collect()
    t = time.perf_counter()
    for df in frames:
        inserted = Ledger(path).append_usage(df)
        assert inserted == len(df), inserted
    return time.perf_counter() - t


# ----------------------------------------------------------------------------------------------- synthetic chain
def sid(n: int) -> dict:
    return {"inner": str(n)}


def digest(n: int) -> str:
    return hashlib.blake2b(n.to_bytes(8, "little"), digest_size=32).hexdigest()


class SyntheticChain:
    """A Chain port serving a pre-built event log in Sui's shapes, with each transaction's USDC balance changes
    computed by the §6 rules (so the ledger's USDC checks all pass)."""

    def __init__(self, n_events: int, seed: int = 1):
        self.rng = random.Random(seed)
        self.log: list[ChainEvent] = []
        self.txs: dict[str, TxResult] = {}
        self.index: dict[tuple[str, int], int] = {}
        self.epoch = 0
        self._tx = 0
        self._build(n_events)

    # -- building
    def _emit(self, sender: str, events: list[tuple[str, dict]], changes: dict[str, int]) -> None:
        self._tx += 1
        d = digest(self._tx)
        ts = 1_700_000_000_000 + self._tx
        evs = [
            ChainEvent(EventId(d, i), f"{PACKAGE}::db::{name}", name, fields, sender, PACKAGE, ts, self.epoch)
            for i, (name, fields) in enumerate(events)
        ]
        for e in evs:
            self.index[(d, e.id.event_seq)] = len(self.log)
            self.log.append(e)
        self.txs[d] = TxResult(d, "success", sender, self.epoch, ts, evs, [], {a: v for a, v in changes.items() if v})

    def _build(self, target: int) -> None:
        rng = self.rng
        admin = "0x" + "a0" * 32
        users = ["0x" + f"{i:02x}" * 32 for i in range(1, 41)]
        n_nodes = 12
        node_addr = {n: "0x" + f"{0x80 + n:02x}" * 32 for n in range(1, n_nodes + 1)}
        levels = {1: 0, 2: 1, 3: 2, 4: 0, 5: 2}
        for t, level in levels.items():
            self._emit(admin, [("TaskRegisteredEvent", {
                "task_id": "0x" + digest(10_000 + t), "task_small_id": sid(t), "role": {"inner": 0},
                "model_name": "meta-llama/Llama-3.3-70B-Instruct", "security_level": {"inner": level},
                "minimum_reputation_score": None})], {})
        for n in range(1, n_nodes + 1):
            self._emit(node_addr[n], [("NodeRegisteredEvent", {"badge_id": "0x" + digest(20_000 + n), "node_small_id": sid(n)})], {})
            for t in levels:
                self._emit(node_addr[n], [("NodeSubscribedToTaskEvent", {
                    "task_small_id": sid(t), "node_small_id": sid(n), "price_per_one_million_compute_units": "1000",
                    "max_num_compute_units": "1000000"})], {})
        scp, ecp, extra = 1200, 12, 1
        credits = {n: 0 for n in node_addr}
        pending: dict[int, list[tuple]] = {n: [] for n in node_addr}  # node -> [(stack, claim args)]
        stack = 0
        while len(self.log) < target:
            stack += 1
            if stack % 500 == 0:
                self.epoch += 1
            task = rng.choice(list(levels))
            level = levels[task]
            node = rng.randint(1, n_nodes)
            owner = rng.choice(users)
            units = rng.choice([100_000, 250_000, 500_000, 1_000_000])
            price = rng.choice([1_000_000, 2_000_000, 3_500_000])
            paid = money.stack_payment(level, price, units, scp, ecp)
            self._emit(owner, [("StackCreatedEvent", {
                "stack_id": "0x" + digest(30_000_000 + stack), "stack_small_id": sid(stack), "owner": owner,
                "task_small_id": sid(task), "selected_node_id": sid(node), "num_compute_units": str(units),
                "price_per_one_million_compute_units": str(price)})], {owner: -paid})
            claimed = rng.randint(0, units)
            if level == 1:
                pending[node].append(("cc", stack, owner, level, price, units, claimed, []))
            else:
                leaf = list(hashlib.blake2b(b"l" + stack.to_bytes(8, "little"), digest_size=32).digest())
                proof = list(hashlib.blake2b(b"p" + stack.to_bytes(8, "little"), digest_size=32).digest())
                attesters = [rng.randint(1, n_nodes)] if level == 2 and rng.random() < 0.3 else []
                self._emit(node_addr[node], [("StackTrySettleEvent", {
                    "stack_small_id": sid(stack), "selected_node_id": sid(node),
                    "requested_attestation_nodes": [sid(a) for a in attesters], "committed_stack_proof": proof,
                    "stack_merkle_leaf": leaf, "num_claimed_compute_units": str(claimed)})], {})
                for a in attesters:
                    self._emit(node_addr[a], [
                        ("NewStackSettlementAttestationEvent", {"stack_small_id": sid(stack), "attestation_node_id": sid(a),
                                                                "committed_stack_proof": proof, "stack_merkle_leaf": leaf}),
                        ("StackSettlementTicketEvent", {"stack_small_id": sid(stack), "selected_node_id": sid(node),
                                                        "num_claimed_compute_units": str(claimed),
                                                        "requested_attestation_nodes": [sid(a)],
                                                        "dispute_settled_at_epoch": str(self.epoch),
                                                        "committed_stack_proof": proof})], {})
                pending[node].append(("ticket", stack, owner, level, price, units, claimed, attesters))
            if len(pending[node]) >= 8 or rng.random() < 0.05:
                self._claim(node, node_addr[node], pending[node], credits, scp, extra)
                pending[node] = []
        for n, lst in pending.items():
            if lst:
                self._claim(n, node_addr[n], lst, credits, scp, extra)

    def _claim(self, node, address, stacks, credits, scp, extra) -> None:
        """One claim transaction per path (claim_funds / claim_funds_for_stacks), as §4.13/§4.14 pay it."""
        for path in ("ticket", "cc"):
            items = [s for s in stacks if s[0] == path]
            if not items:
                continue
            events, changes, fee_total = [], {}, 0
            for _, stack, owner, level, price, units, claimed, attesters in items:
                if path == "ticket":
                    fee = money.stack_fee_amount(level, price, claimed, scp)
                    refund = money.stack_fee_amount(level, price, units - claimed, scp)
                    for a in attesters:
                        credits[a] += money.attester_credit(fee, extra)
                    events.append(("StackSettlementTicketClaimedEvent", {
                        "stack_small_id": sid(stack), "selected_node_id": sid(node),
                        "attestation_nodes": [sid(a) for a in attesters],
                        "num_claimed_compute_units": str(claimed), "user_refund_amount": str(refund)}))
                else:
                    fee = money.confidential_claim_amount(price, claimed)
                    refund = money.confidential_claim_amount(price, units - claimed)
                    events.append(("ClaimedStackEvent", {
                        "stack_small_id": sid(stack), "selected_node_id": sid(node),
                        "num_claimed_compute_units": str(claimed), "user_refund_amount": str(refund)}))
                fee_total += fee
                changes[owner] = changes.get(owner, 0) + refund
            changes[address] = changes.get(address, 0) + fee_total + credits[node]  # then withdraw_fees
            credits[node] = 0
            self._emit(address, events, changes)

    # -- the Chain port reads the indexer uses
    async def db_config(self) -> DbConfig:
        return DbConfig("0x" + "db" * 32, PACKAGE, 13, 6, len(self.log), 0, 0, 10, 1, 1200, 12, False, 0, 100, 100, 200, 0, 0)

    async def current_epoch(self) -> int:
        return self.epoch

    async def events(self, cursor: EventId | None = None, limit: int = 50) -> EventPage:
        start = 0 if cursor is None else self.index[(cursor.tx_digest, cursor.event_seq)] + 1
        page = self.log[start : start + limit]
        return EventPage(page, page[-1].id if page else cursor, start + limit < len(self.log))

    async def get_transaction(self, d: str) -> TxResult | None:
        return self.txs.get(d)


# ----------------------------------------------------------------------------------------------- main
def fmt_rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s ({seconds:.3f} s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-events", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where the temporary folder is made")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.dir))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    print(f"duckdb {duckdb.__version__}, pandas {pd.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPU(s); folder {tmp}")
    t = time.perf_counter()
    whole = usage_frame(args.rows)
    tenths = [whole.iloc[i : i + args.rows // 10].reset_index(drop=True) for i in range(0, args.rows, args.rows // 10)]
    print(f"\n1. usage rows: {args.rows:,} (DataFrame built in {time.perf_counter() - t:.2f} s, "
          f"{whole.memory_usage(deep=True).sum() / 1e6:,.0f} MB in memory)")
    for label, frames in ((f"1 batch of {args.rows:,}", [whole]), (f"10 batches of {args.rows // 10:,}", tenths)):
        raw, led = [], []
        for _ in range(args.rounds):
            raw.append(time_raw(tmp / "raw.duckdb", frames))
            led.append(time_ledger(tmp / "usage.duckdb", frames))
        r, l_ = statistics.median(raw), statistics.median(led)
        print(f"   {label}:")
        print(f"     raw con.append into a bare table   {fmt_rate(args.rows, r)}   rounds {[round(x, 3) for x in raw]}")
        print(f"     Ledger.append_usage (keyed, checked) {fmt_rate(args.rows, l_)}   rounds {[round(x, 3) for x in led]}")
        print(f"     ratio ledger / raw = {r / l_:.2f}x   (goal >= 0.5x: {'met' if r / l_ >= 0.5 else 'MISSED'})")
    raw_size = (tmp / "raw.duckdb").stat().st_size

    print(f"\n2. events: building a synthetic chain of ~{args.events:,} events …", end="", flush=True)
    t = time.perf_counter()
    chain = SyntheticChain(args.events)
    print(f" {len(chain.log):,} events in {len(chain.txs):,} transactions ({time.perf_counter() - t:.1f} s)")
    ledger_path = tmp / "ledger.duckdb"
    shutil.copy(tmp / "usage.duckdb", ledger_path)  # the ledger that holds the 1M usage rows
    ledger = Ledger(ledger_path)
    gc.collect()
    t = time.perf_counter()
    report = asyncio.run(ledger.sync(chain, batch_events=args.batch_events, page_limit=args.batch_events))
    dt = time.perf_counter() - t
    print(f"   Ledger.sync: {report.events_applied:,} events in {report.batches} batches: {fmt_rate(report.events_applied, dt)}"
          f"  ({dt / report.batches * 1000:.0f} ms per batch of {args.batch_events})")
    t = time.perf_counter()
    again = asyncio.run(ledger.sync(chain))
    print(f"   a second sync (nothing new): {again.events_applied} events, {time.perf_counter() - t:.3f} s")

    print("\n3. queries over those rows (median of 5, each one unit of work: open read-only, query, close)")
    queries = {
        "earnings(by='node')": lambda: ledger.earnings(by="node"),
        "earnings(by='task')": lambda: ledger.earnings(by="task"),
        "earnings(by='epoch')": lambda: ledger.earnings(by="epoch"),
        "earnings(by='epoch_node')": lambda: ledger.earnings(by="epoch_node"),
        "stacks() (utilisation, joins usage)": lambda: ledger.stacks(),
        "usdc_flow()": lambda: ledger.usdc_flow(),
        "usdc_checks(mismatches_only=True)": lambda: ledger.usdc_checks(mismatches_only=True),
    }
    results = {}
    for name, fn in queries.items():
        times = []
        for _ in range(5):
            t = time.perf_counter()
            results[name] = fn()
            times.append(time.perf_counter() - t)
        out = results[name]
        shape = f"{len(out)} rows" if hasattr(out, "__len__") and not isinstance(out, dict) else "1 row"
        print(f"   {name:<40} {statistics.median(times) * 1000:8.1f} ms   ({shape})")
    with ledger.reader() as con:
        t = time.perf_counter()
        con.execute("SELECT * FROM earnings_by_node").fetchall()
        print(f"   {'earnings_by_node on an open connection':<40} {(time.perf_counter() - t) * 1000:8.1f} ms")
    mism = len(results["usdc_checks(mismatches_only=True)"])
    flow = results["usdc_flow()"]
    print(f"   USDC checks: {mism} mismatch(es); paid in {flow['paid_in']:,}, paid out {flow['paid_out']:,}, "
          f"treasury by the events {flow['fee_treasury_expected']:,}")

    print("\n4. sizes")
    print(f"   ledger file {ledger_path.stat().st_size / 1e6:,.1f} MB; the raw usage file alone {raw_size / 1e6:,.1f} MB")
    with ledger.reader() as con:
        for table in ("events", "transactions", "balance_changes", "stacks", "stack_settlement_tickets",
                      "attestations", "claims", "attester_credits", "usage"):
            n = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            print(f"   {table:<26} {n:>10,} rows")


if __name__ == "__main__":
    main()
