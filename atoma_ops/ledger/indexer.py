"""The event indexer: events after the cursor → raw log + chain-state mirror, one DuckDB transaction per batch.

Each batch is read from the Chain port first (events, then each new transaction's effects for its USDC balance
changes), with the ledger file closed; then one short unit of work opens the file, checks the cursor is still where
the batch started, writes the raw events, the transactions and their balance changes, refolds every entity the batch
touched (fold.py), moves the cursor, and commits. A crash anywhere before COMMIT leaves the previous state; a crash
after it leaves the new one; either way a re-run continues from the committed cursor and ends in the same ledger.
Events already in the log (same ``(tx_digest, event_seq)``) are skipped, so applying a batch twice changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import duckdb
import pandas as pd

from ..chain._json import dumps, loads
from ..chain.types import ChainEvent, DbConfig, EventId, TxResult
from . import fold as F
from .frames import delete_keys, frame, insert_frame, insert_rows, int_list, table_columns
from .migrations import first
from .store import DEFAULT_LOCK_TIMEOUT_S, LedgerError, ensure_schema, unit_of_work

EVENT_COLUMNS = [
    ("seq", "BIGINT"),
    ("tx_digest", "VARCHAR"),
    ("event_seq", "BIGINT"),
    ("type", "VARCHAR"),
    ("name", "VARCHAR"),
    ("sender", "VARCHAR"),
    ("package_id", "VARCHAR"),
    ("parsed_json", "JSON"),
    ("epoch", "BIGINT"),
    ("timestamp_ms", "BIGINT"),
    ("stack_small_id", "BIGINT"),
    ("task_small_id", "BIGINT"),
    ("node_small_id", "BIGINT"),
]


class ChainMismatch(LedgerError):
    """The ledger file mirrors another deployment (e.g. the localnet was re-initialised)."""


class CursorMoved(LedgerError):
    """Another process advanced the cursor while this batch was being read (the batch is dropped and re-read)."""


@dataclass
class SyncReport:
    events_applied: int = 0
    events_skipped: int = 0  # already in the log
    batches: int = 0
    transactions: int = 0
    cursor: EventId | None = None
    chain_epoch: int | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "events_applied": self.events_applied,
            "events_skipped": self.events_skipped,
            "batches": self.batches,
            "transactions": self.transactions,
            "cursor": None if self.cursor is None else self.cursor.to_json(),
            "chain_epoch": self.chain_epoch,
            "seconds": round(self.seconds, 3),
        }


def config_of(cfg: DbConfig | None) -> F.Config:
    if cfg is None:
        return F.Config()
    return F.Config(
        sampling_consensus_charge_permille=cfg.sampling_consensus_charge_permille,
        cross_validation_extra_nodes_charge_permille=cfg.cross_validation_extra_nodes_charge_permille,
        cross_validation_extra_nodes_count=cfg.cross_validation_extra_nodes_count,
    )


def read_cursor(con: duckdb.DuckDBPyConnection) -> EventId | None:
    row = first(con.execute("SELECT tx_digest, event_seq FROM indexer_cursor WHERE id = 1").fetchall())
    if row is None or row[0] is None:
        return None
    return EventId(row[0], int(row[1]))


def read_config(con: duckdb.DuckDBPyConnection) -> F.Config:
    row = first(con.execute(
        "SELECT sampling_consensus_charge_permille, cross_validation_extra_nodes_charge_permille, "
        "cross_validation_extra_nodes_count FROM chain_snapshot WHERE id = 1"
    ).fetchall())
    if row is None:
        return F.Config()
    return F.Config(int(row[0]), int(row[1]), int(row[2]))


def write_snapshot(con: duckdb.DuckDBPyConnection, cfg: DbConfig, epoch: int) -> None:
    """Record the chain's identity, epoch and AtomaDb scalars; refuse a ledger made for another deployment."""
    row = first(con.execute("SELECT db_id, package_id FROM chain_snapshot WHERE id = 1").fetchall())
    if row is not None and (row[0], row[1]) != (cfg.db_id, cfg.package_id):
        raise ChainMismatch(
            f"this ledger mirrors AtomaDb {row[0]} (package {row[1]}), but the chain's is {cfg.db_id} "
            f"(package {cfg.package_id}): the localnet was re-initialised or --home points elsewhere. "
            "Use another ledger path, or delete this ledger file to rebuild it from the chain's events."
        )
    con.execute("DELETE FROM chain_snapshot WHERE id = 1")
    con.execute(
        "INSERT INTO chain_snapshot VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            cfg.db_id,
            cfg.package_id,
            epoch,
            datetime.now(timezone.utc).replace(tzinfo=None),
            cfg.fee_treasury,
            cfg.communal_treasury,
            cfg.next_node_small_id,
            cfg.next_task_small_id,
            cfg.next_stack_small_id,
            cfg.cross_validation_probability_permille,
            cfg.cross_validation_extra_nodes_count,
            cfg.sampling_consensus_charge_permille,
            cfg.cross_validation_extra_nodes_charge_permille,
        ],
    )


def _events_of(con, where: str) -> list[tuple]:
    sql = (
        "SELECT seq, name, parsed_json, sender, epoch, tx_digest, stack_small_id, task_small_id, node_small_id "
        f"FROM events e WHERE {where} ORDER BY seq"
    )
    return con.execute(sql).fetchall()


def _ev(row: tuple) -> F.Ev:
    return F.Ev(seq=row[0], name=row[1], json=loads(row[2]), sender=row[3], epoch=row[4], tx_digest=row[5])


def apply_batch(
    con: duckdb.DuckDBPyConnection,
    events: list[ChainEvent],
    transactions: dict[str, TxResult | None],
    next_cursor: EventId | None,
    *,
    expected_cursor: Any = "any",
    before_commit: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Apply one batch in one transaction; returns (events applied, events already present).

    ``expected_cursor``: the cursor the batch was read after; if the ledger's differs, :class:`CursorMoved` is raised
    and nothing is written ("any" skips the check: used by tests that apply a page twice on purpose).
    ``before_commit``: a hook run just before COMMIT (tests use it to crash there).
    """
    con.execute("BEGIN TRANSACTION")
    try:
        if expected_cursor != "any" and read_cursor(con) != expected_cursor:
            raise CursorMoved("another sync moved the cursor")
        applied, skipped = _apply(con, events, transactions)
        has_cursor = first(con.execute("SELECT count(*) FROM indexer_cursor").fetchall())[0] > 0
        if applied or not has_cursor or expected_cursor != "any":
            # a batch read right after the stored cursor moves it forward; a replayed page whose events are all in
            # the log already (applied without a cursor check) leaves it where it is
            total = first(con.execute("SELECT count(*) FROM events").fetchall())[0]
            cursor = next_cursor if next_cursor is not None else read_cursor(con)
            con.execute("DELETE FROM indexer_cursor WHERE id = 1")
            con.execute(
                "INSERT INTO indexer_cursor VALUES (1, ?, ?, ?, ?)",
                [
                    None if cursor is None else cursor.tx_digest,
                    None if cursor is None else cursor.event_seq,
                    total,
                    datetime.now(timezone.utc).replace(tzinfo=None),
                ],
            )
        if before_commit is not None:
            before_commit()
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    return applied, skipped


def _apply(con, events: list[ChainEvent], transactions: dict[str, TxResult | None]) -> tuple[int, int]:
    if not events:
        return 0, 0
    # 1. skip events already in the log
    # (a join with the batch's digests through DuckDB's replacement scan; an IN list of strings is much slower)
    _ledger_digests = pd.DataFrame({"d": pd.Series(sorted({e.id.tx_digest for e in events}), dtype=object)})  # noqa: F841
    known = {
        (r[0], r[1])
        for r in con.execute(
            "SELECT e.tx_digest, e.event_seq FROM events e JOIN _ledger_digests b ON e.tx_digest = b.d"
        ).fetchall()
    }
    seen: set[tuple[str, int]] = set()
    new: list[ChainEvent] = []
    for e in events:
        key = (e.id.tx_digest, e.id.event_seq)
        if key in known or key in seen:
            continue
        seen.add(key)
        new.append(e)
    if not new:
        return 0, len(events)

    # 2. raw events
    next_seq = first(con.execute("SELECT COALESCE(max(seq), 0) + 1 FROM events").fetchall())[0]
    rows = []
    touched_tasks: set[int] = set()
    touched_nodes: set[int] = set()
    touched_subs: set[tuple[int, int]] = set()
    touched_stacks: set[int] = set()
    for i, e in enumerate(new):
        stack, task, node = F.event_keys(e.name, e.parsed_json)
        rows.append(
            {
                "seq": next_seq + i,
                "tx_digest": e.id.tx_digest,
                "event_seq": e.id.event_seq,
                "type": e.type,
                "name": e.name,
                "sender": e.sender,
                "package_id": e.package_id,
                "parsed_json": dumps(e.parsed_json),
                # an adapter whose events carry no epoch: the transaction's
                "epoch": e.epoch if e.epoch is not None else getattr(transactions.get(e.id.tx_digest), "epoch", None),
                "timestamp_ms": e.timestamp_ms,
                "stack_small_id": stack,
                "task_small_id": task,
                "node_small_id": node,
            }
        )
        if e.name in F.TASK_EVENTS and task is not None:
            touched_tasks.add(task)
        elif e.name in F.NODE_EVENTS and node is not None:
            touched_nodes.add(node)
        elif e.name in F.SUBSCRIPTION_EVENTS and task is not None and node is not None:
            touched_subs.add((task, node))
        elif e.name in F.STACK_EVENTS and stack is not None:
            touched_stacks.add(stack)
    insert_frame(con, "events", frame(EVENT_COLUMNS, rows), EVENT_COLUMNS)

    # 3. transactions and their USDC balance changes (the payouts actually made)
    new_digests = sorted({e.id.tx_digest for e in new})
    # a transaction's events may straddle two batches: widen its span, keep its balance changes (the same effects)
    first_event: dict[str, ChainEvent] = {}
    spans: dict[str, list[int]] = {}
    for row, e in zip(rows, new):
        first_event.setdefault(e.id.tx_digest, e)
        span = spans.setdefault(e.id.tx_digest, [row["seq"], row["seq"]])
        span[1] = row["seq"]
    tx_rows, bc_rows = [], []
    for d in new_digests:
        tx = transactions.get(d)
        lo, hi = spans[d]
        ev = first_event[d]
        if tx is None:
            tx_rows.append({"tx_digest": d, "sender": ev.sender, "status": "unknown", "epoch": ev.epoch,
                            "timestamp_ms": ev.timestamp_ms, "first_seq": lo, "last_seq": hi})
            continue
        tx_rows.append({"tx_digest": d, "sender": tx.sender, "status": tx.status, "epoch": tx.epoch,
                        "timestamp_ms": tx.timestamp_ms, "first_seq": lo, "last_seq": hi})
        for address, amount in sorted(tx.balance_changes.items()):
            if amount:
                bc_rows.append({"tx_digest": d, "address": address, "amount": int(amount)})
    cols = _columns(con, "transactions")
    insert_frame(con, "transactions", frame(cols, tx_rows), cols, on_conflict=(
        "ON CONFLICT (tx_digest) DO UPDATE SET first_seq = least(first_seq, excluded.first_seq), "
        "last_seq = greatest(last_seq, excluded.last_seq)"))
    cols = _columns(con, "balance_changes")
    insert_frame(con, "balance_changes", frame(cols, bc_rows), cols, on_conflict="ON CONFLICT DO NOTHING")

    # 4. refold every touched entity from the whole log
    cfg = read_config(con)
    _refold_tasks(con, touched_tasks)
    _refold_nodes(con, touched_nodes)
    _refold_subscriptions(con, touched_subs)
    _refold_stacks(con, touched_stacks, cfg)
    return len(new), len(events) - len(new)


def _group(rows: list[tuple], key_index) -> dict:
    out: dict[Any, list[F.Ev]] = {}
    for r in rows:
        key = key_index(r)
        out.setdefault(key, []).append(_ev(r))
    return out


def _names(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _refold_tasks(con, ids: set[int]) -> None:
    if not ids:
        return
    rows = _events_of(con, f"task_small_id IN ({int_list(ids)}) AND name IN ({_names(F.TASK_EVENTS)})")
    out = [F.fold_task(task, evs) for task, evs in _group(rows, lambda r: r[7]).items()]
    delete_keys(con, "tasks", ["task_small_id"], [(i,) for i in ids])
    insert_rows(con, "tasks", [r for r in out if r is not None], _columns(con, "tasks"))


def _refold_nodes(con, ids: set[int]) -> None:
    if not ids:
        return
    rows = _events_of(con, f"node_small_id IN ({int_list(ids)}) AND name IN ({_names(F.NODE_EVENTS)})")
    nodes, keys = [], []
    for node, evs in _group(rows, lambda r: r[8]).items():
        row, rotations = F.fold_node(node, evs)
        if row is not None:
            nodes.append(row)
        keys.extend(rotations)
    delete_keys(con, "nodes", ["node_small_id"], [(i,) for i in ids])
    delete_keys(con, "node_public_key_rotations", ["node_small_id"], [(i,) for i in ids])
    insert_rows(con, "nodes", nodes, _columns(con, "nodes"))
    insert_rows(con, "node_public_key_rotations", keys, _columns(con, "node_public_key_rotations"))


def _refold_subscriptions(con, pairs: set[tuple[int, int]]) -> None:
    if not pairs:
        return
    values = ", ".join(f"({int(t)}, {int(n)})" for t, n in sorted(pairs))
    rows = con.execute(
        "SELECT seq, name, parsed_json, sender, epoch, tx_digest, stack_small_id, task_small_id, node_small_id "
        f"FROM events e WHERE name IN ({_names(F.SUBSCRIPTION_EVENTS)}) AND EXISTS "
        f"(SELECT 1 FROM (VALUES {values}) p(task, node) WHERE p.task = e.task_small_id AND p.node = e.node_small_id) "
        "ORDER BY seq"
    ).fetchall()
    out = [F.fold_subscription(k[0], k[1], evs) for k, evs in _group(rows, lambda r: (r[7], r[8])).items()]
    delete_keys(con, "node_subscriptions", ["task_small_id", "node_small_id"], pairs)
    insert_rows(con, "node_subscriptions", [r for r in out if r is not None], _columns(con, "node_subscriptions"))


_STACK_TABLES = ("stacks", "stack_settlement_tickets", "attestations", "disputes", "claims", "attester_credits")


def _refold_stacks(con, ids: set[int], cfg: F.Config) -> None:
    if not ids:
        return
    rows = _events_of(con, f"stack_small_id IN ({int_list(ids)}) AND name IN ({_names(F.STACK_EVENTS)})")
    grouped = _group(rows, lambda r: r[6])
    tasks = {
        F.small_id(ev.json.get("task_small_id"))
        for evs in grouped.values()
        for ev in evs
        if ev.name == "StackCreatedEvent"
    }
    levels: dict[int, int] = {}
    if tasks:
        levels = dict(
            con.execute(
                f"SELECT task_small_id, security_level FROM tasks WHERE task_small_id IN ({int_list(tasks)})"
            ).fetchall()
        )
    out: dict[str, list[dict]] = {t: [] for t in _STACK_TABLES}
    for stack_id, evs in grouped.items():
        r = F.fold_stack(stack_id, evs, levels, cfg)
        if r.stack is not None:
            out["stacks"].append(r.stack)
        if r.ticket is not None:
            out["stack_settlement_tickets"].append(r.ticket)
        if r.claim is not None:
            out["claims"].append(r.claim)
        out["attestations"].extend(r.attestations or [])
        out["disputes"].extend(r.disputes or [])
        out["attester_credits"].extend(r.credits or [])
    keys = [(i,) for i in ids]
    for table in _STACK_TABLES:
        delete_keys(con, table, ["stack_small_id"], keys)
        insert_rows(con, table, out[table], _columns(con, table))


_COLUMN_CACHE: dict[str, list] = {}


def _columns(con, table: str):
    """Column types of a mirror table (the same in every ledger at the latest schema version)."""
    cols = _COLUMN_CACHE.get(table)
    if cols is None:
        cols = _COLUMN_CACHE[table] = table_columns(con, table)
    return cols


# ---------------------------------------------------------------------------------------------- the sync loop
class Indexer:
    """Reads the chain's events after the ledger's cursor and applies them in batches.

    Args:
        path: the ledger file.
        batch_events: events per ledger transaction (one unit of work: the file is held only while it is written).
        page_limit: events per Chain port ``events`` call (Sui's JSON-RPC allows at most 50).
        tx_concurrency: concurrent ``get_transaction`` look-ups.
        lock_timeout_s: how long an open waits for another process's lock before failing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_events: int = 1000,
        page_limit: int = 50,
        tx_concurrency: int = 16,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ):
        if batch_events < 1 or page_limit < 1:
            raise ValueError("batch_events and page_limit must be >= 1")
        self.path = Path(path)
        self.batch_events = batch_events
        self.page_limit = page_limit
        self.tx_concurrency = tx_concurrency
        self.lock_timeout_s = lock_timeout_s

    async def _read_batch(self, chain, cursor: EventId | None) -> tuple[list[ChainEvent], EventId | None, bool]:
        events: list[ChainEvent] = []
        more = True
        while len(events) < self.batch_events:
            page = await chain.events(cursor, min(self.page_limit, self.batch_events - len(events)))
            events.extend(page.events)
            if page.events:
                cursor = page.next_cursor if page.next_cursor is not None else page.events[-1].id
            more = page.has_next_page
            if not page.has_next_page or not page.events:
                break
        return events, cursor, more

    async def _transactions(self, chain, digests: list[str]) -> dict[str, TxResult | None]:
        sem = asyncio.Semaphore(self.tx_concurrency)

        async def one(d: str):
            async with sem:
                return d, await chain.get_transaction(d)

        return dict(await asyncio.gather(*(one(d) for d in digests)))

    async def sync(
        self,
        chain,
        *,
        max_batches: int | None = None,
        before_commit: Callable[[int], None] | None = None,
    ) -> SyncReport:
        """Index everything up to the chain's head (or ``max_batches`` batches).

        ``before_commit(batch_number)``: test hook, called inside each batch's transaction just before COMMIT.
        """
        started = time.monotonic()
        report = SyncReport()
        cfg = await chain.db_config()
        epoch = await chain.current_epoch()
        report.chain_epoch = epoch
        ensure_schema(self.path, timeout_s=self.lock_timeout_s)
        with unit_of_work(self.path, timeout_s=self.lock_timeout_s) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                write_snapshot(con, cfg, epoch)
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
            cursor = read_cursor(con)
        while max_batches is None or report.batches < max_batches:
            events, next_cursor, more = await self._read_batch(chain, cursor)
            if not events:
                break
            txs = await self._transactions(chain, sorted({e.id.tx_digest for e in events}))
            hook = None if before_commit is None else (lambda n=report.batches: before_commit(n))
            try:
                with unit_of_work(self.path, timeout_s=self.lock_timeout_s) as con:
                    if more and (max_batches is None or report.batches + 1 < max_batches):
                        # more batches follow: leave the WAL for the last one to checkpoint (commits are durable
                        # either way; readers in between replay the WAL, which costs them a little)
                        con.execute("PRAGMA disable_checkpoint_on_shutdown")
                    applied, skipped = apply_batch(
                        con, events, txs, next_cursor, expected_cursor=cursor, before_commit=hook
                    )
            except CursorMoved:
                with unit_of_work(self.path, read_only=True, timeout_s=self.lock_timeout_s) as con:
                    cursor = read_cursor(con)
                continue
            report.batches += 1
            report.events_applied += applied
            report.events_skipped += skipped
            report.transactions += len(txs)
            cursor = next_cursor
            if not more:
                break
        report.cursor = cursor
        report.seconds = time.monotonic() - started
        return report


def _rollback(con) -> None:
    """Roll back, keeping the error that got us here: when a write failed (a full disk, say) DuckDB may have ended
    the transaction already, and its "no transaction is active" would hide the real cause."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass
