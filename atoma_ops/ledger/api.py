"""``Ledger``: the Python access to the DuckDB ledger — sync, usage appends, analyst reads as pandas DataFrames.

Every method is one unit of work: it opens the file, does its work and closes it, so a sync in another process and an
analyst's query only ever wait for each other for one batch or one query (see store.py). For an analyst session that
stays open, take a snapshot (:meth:`Ledger.snapshot`, or Parquet with :meth:`Ledger.export_parquet`) and query that.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import duckdb
import pandas as pd

from ..chain._json import dumps
from .frames import table_columns
from .indexer import Indexer, SyncReport
from .migrations import first
from ..home import ledger_path
from .store import DEFAULT_LOCK_TIMEOUT_S, STORAGE_VERSION, LedgerError, ensure_schema, unit_of_work

if TYPE_CHECKING:  # pragma: no cover
    from .reconcile import ReconcileReport

EARNINGS_VIEWS = {
    "node": "earnings_by_node",
    "task": "earnings_by_task",
    "epoch": "earnings_by_epoch",
    "epoch_node": "earnings_by_epoch_node",
}

USAGE_REQUIRED = ("stack_small_id", "request_index")
_HASH_COLUMNS = ("payload_hash", "response_hash")

# what export writes: every table and view an analyst may want
EXPORTED = (
    "events", "transactions", "balance_changes", "chain_snapshot", "indexer_cursor",
    "tasks", "nodes", "node_public_key_rotations", "node_subscriptions", "stacks", "stack_settlement_tickets",
    "attestations", "disputes", "claims", "attester_credits", "usage", "chain_actions",
    "earnings_by_node", "earnings_by_task", "earnings_by_epoch", "earnings_by_epoch_node", "refunds_by_buyer",
    "stack_utilisation", "open_tickets", "attestation_status", "claim_accounting", "sampling_consensus_payouts",
    "usdc_checks", "usdc_mismatches", "usdc_flow", "credit_withdrawals", "node_credit_balances",
    "request_latency",
)


_ACTION_FIELDS = (
    "idempotency_key", "kind", "stack_small_id", "stack_small_ids", "status", "sender", "args", "signed_tx_bytes",
    "signature", "digest", "last_error_code", "last_error",
)


def _upsert_actions(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    """Insert or update journal rows on ``con`` (see :meth:`Ledger.record_actions`)."""
    if not rows:
        return
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    unknown = {k for r in rows for k in r} - set(_ACTION_FIELDS) - {"attempt"}
    if unknown:
        raise ValueError(f"record_actions: unknown field(s) {sorted(unknown)}")
    frame = pd.DataFrame(
        {
            **{f: [r.get(f) for r in rows] for f in _ACTION_FIELDS if f not in ("args", "stack_small_ids")},
            "args": [None if r.get("args") is None else dumps(r["args"]) for r in rows],
            "stack_small_ids": [None if r.get("stack_small_ids") is None else dumps(r["stack_small_ids"]) for r in rows],
            "attempts": [1 if r.get("attempt") else 0 for r in rows],
        }
    ).astype(object)
    keep = ", ".join(
        f"{c} = COALESCE(excluded.{c}, chain_actions.{c})"
        for c in ("stack_small_id", "stack_small_ids", "sender", "args", "signed_tx_bytes", "signature", "digest",
                  "last_error_code", "last_error")
    )
    con.register("_journal_rows", frame)
    try:
        con.execute(
            "INSERT INTO chain_actions (idempotency_key, kind, stack_small_id, stack_small_ids, status, sender, "
            "args, signed_tx_bytes, signature, digest, attempts, last_error_code, last_error, created_at, "
            "updated_at) "
            "SELECT idempotency_key::VARCHAR, kind::VARCHAR, stack_small_id::BIGINT, "
            "CAST(stack_small_ids::JSON AS BIGINT[]), status::VARCHAR, "
            "sender::VARCHAR, args::JSON, signed_tx_bytes::BLOB, signature::VARCHAR, digest::VARCHAR, "
            "attempts::BIGINT, last_error_code::VARCHAR, last_error::VARCHAR, $now, $now FROM _journal_rows "
            "ON CONFLICT (idempotency_key) DO UPDATE SET kind = excluded.kind, status = excluded.status, "
            f"{keep}, attempts = chain_actions.attempts + excluded.attempts, updated_at = excluded.updated_at",
            {"now": now},
        )
    finally:
        con.unregister("_journal_rows")


def default_path(home: str | os.PathLike | None = None) -> Path:
    """``<localnet home>/ledger.duckdb`` (home: ``--home``, else ``$ATOMA_OPS_HOME``, else ``data/localnet``)."""
    return ledger_path(home)


class Ledger:
    """One ledger file.

    Args:
        path: the DuckDB file (default: ``<localnet home>/ledger.duckdb``).
        lock_timeout_s: how long an open waits while another process holds the file, then :class:`LedgerBusy`.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S):
        self.path = Path(path) if path is not None else default_path()
        self.lock_timeout_s = lock_timeout_s
        self._schema_checked = False

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------ connections
    #: files this process has already migrated, by (path, inode): a task opening a fresh Ledger on the same file
    #: skips the ~70 ms check (a file replaced since has another inode and is checked again)
    _migrated: set[tuple[str, int]] = set()

    def _ensure(self) -> None:
        if self._schema_checked:
            return
        try:
            identity = (str(self.path.resolve()), self.path.stat().st_ino)
        except OSError:
            identity = None
        if identity is None or identity not in Ledger._migrated:
            ensure_schema(self.path, timeout_s=self.lock_timeout_s)
            identity = (str(self.path.resolve()), self.path.stat().st_ino)
            Ledger._migrated.add(identity)
        self._schema_checked = True

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection for one unit of work (migrated schema), closed on exit."""
        self._ensure()
        with unit_of_work(self.path, timeout_s=self.lock_timeout_s) as con:
            yield con

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection, closed on exit. While it is open no other process can write the ledger: keep
        it for one query or a few, and use :meth:`snapshot` for a long session."""
        if self.path.exists():
            self._ensure()
        with unit_of_work(self.path, read_only=True, timeout_s=self.lock_timeout_s) as con:
            yield con

    def connect_read_only(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection the caller closes (blocks writers until then: prefer :meth:`reader`)."""
        if self.path.exists():
            self._ensure()
        from .store import connect

        return connect(self.path, read_only=True, timeout_s=self.lock_timeout_s)

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run one read-only query and return a DataFrame."""
        with self.reader() as con:
            return con.execute(sql, params or []).df()

    # ------------------------------------------------------------------------------------------ writes
    async def sync(self, chain, **kwargs) -> SyncReport:
        """Index the chain's events after the cursor (see :class:`Indexer` for ``batch_events``, ``page_limit``)."""
        self._ensure()
        hooks = {k: kwargs.pop(k) for k in ("max_batches", "before_commit") if k in kwargs}
        indexer = Indexer(self.path, lock_timeout_s=self.lock_timeout_s, **kwargs)
        return await indexer.sync(chain, **hooks)

    def import_node_usage(self, home: Any) -> int:
        """Copy the served requests of every node store under ``home`` (``nodes/*/serving.sqlite``) into
        ``usage``; requests already there are skipped. Returns the rows added."""
        from .node_usage import import_node_usage

        return import_node_usage(self, home)

    def append_usage(self, df: Any, *, feed: dict | None = None) -> int:
        """Append per-request usage rows in one batch (a pandas DataFrame, or anything DuckDB can scan: a pyarrow
        Table, a polars DataFrame). Returns the rows inserted.

        Columns: ``stack_small_id``, ``request_index`` (required; the key), ``prompt_tokens``,
        ``completion_tokens``, ``estimated_units``, ``actual_units``, ``latency_ms`` (arrival to finish),
        ``payload_hash``, ``response_hash`` (32 bytes, or 64 hex characters), ``served_at_ms``, ``ttft_ms``
        (arrival to first token); missing optional columns are NULL.
        Rows whose ``(stack_small_id, request_index)`` is already present are skipped, so a retried batch is
        harmless.

        ``feed``: where an import over HTTP stands after these rows (``node_small_id``, ``node_address``, ``url``,
        ``feed``, ``cursor``), written to ``usage_feeds`` in the same transaction as the rows.
        """
        columns = self._usage_columns()
        names = [c for c, _ in columns]
        given = list(df.columns) if hasattr(df, "columns") else list(df.column_names)
        unknown = [c for c in given if c not in names]
        if unknown:
            raise ValueError(f"append_usage: unknown column(s) {unknown}; the usage columns are {names}")
        missing = [c for c in USAGE_REQUIRED if c not in given]
        if missing:
            raise ValueError(f"append_usage: missing required column(s) {missing}")
        select = []
        for name, type_ in columns:
            if name not in given:
                select.append(f"NULL::{type_}")
            elif name in _HASH_COLUMNS and _is_hex_column(df, name):
                select.append(f"unhex(regexp_replace(\"{name}\", '^0x', ''))")
            else:
                select.append(f'CAST("{name}" AS {type_})')
        sql = f"INSERT INTO usage SELECT {', '.join(select)} FROM _ledger_usage"
        with self.writer() as con:
            con.register("_ledger_usage", df)
            try:
                if feed is not None:
                    from .node_usage import insert_with_feed

                    return insert_with_feed(con, sql, feed)
                try:
                    return int(first(con.execute(sql).fetchall())[0])
                except duckdb.ConstraintException as exc:
                    if "duplicate key" not in str(exc).lower():
                        raise ValueError(f"append_usage: {exc}") from None
                    # a retried batch: the fast path refused it whole; keep the rows not yet present
                    return int(first(con.execute(sql + " ON CONFLICT DO NOTHING").fetchall())[0])
            finally:
                con.unregister("_ledger_usage")

    _usage_cols: list | None = None

    def _usage_columns(self) -> list[tuple[str, str]]:
        if Ledger._usage_cols is None:
            with self.writer() as con:
                Ledger._usage_cols = table_columns(con, "usage")
        else:
            self._ensure()
        return Ledger._usage_cols

    def record_action(self, idempotency_key: str, kind: str, status: str, **fields: Any) -> None:
        """Insert or update one ``chain_actions`` row (the intent journal); see :meth:`record_actions`."""
        self.record_actions([{"idempotency_key": idempotency_key, "kind": kind, "status": status, **fields}])

    def record_actions(self, rows: list[dict]) -> None:
        """Insert or update ``chain_actions`` rows (the intent journal) in one transaction.

        Each row names ``idempotency_key``, ``kind`` and ``status``, and may give ``stack_small_id``,
        ``stack_small_ids`` (a list: the stacks the write covers), ``sender``,
        ``args`` (a dict), ``signed_tx_bytes``, ``signature``, ``digest``, ``attempt`` (True counts one more
        submission), ``last_error_code`` and ``last_error``. Fields left out or None keep their stored value.
        """
        if not rows:
            return
        with self.writer() as con:
            _upsert_actions(con, rows)

    def claim_actions(self, rows: list[dict]) -> list[str]:
        """Journal ``rows`` (signed, about to be submitted) as theirs, each only if its key is free: no row yet, or
        a row not ``pending`` that may be written again (``failed``, or finished when the row says ``repeatable``).
        Read and write are one unit of work, which holds the file against every other process and thread, so two
        writers never both claim a key. Returns the keys claimed."""
        if not rows:
            return []
        keys = [r["idempotency_key"] for r in rows]
        with self.writer() as con:
            held = dict(con.execute(
                "SELECT idempotency_key, status FROM chain_actions WHERE idempotency_key IN (SELECT unnest($keys))",
                {"keys": keys},
            ).fetchall())
            free = [
                r for r in rows
                if r["idempotency_key"] not in held
                or (held[r["idempotency_key"]] != "pending" and (held[r["idempotency_key"]] == "failed" or r.get("repeatable")))
            ]
            _upsert_actions(con, [{k: v for k, v in r.items() if k != "repeatable"} for r in free])
        return [r["idempotency_key"] for r in free]

    def actions(self, keys: list[str] | None = None, *, statuses: list[str] | None = None) -> dict[str, dict]:
        """The journal rows for ``keys`` (all when None), optionally only those in ``statuses``, by key."""
        where, params = [], []
        if keys is not None:
            if not keys:
                return {}
            where.append("idempotency_key IN (SELECT unnest($keys))")
            params.append(("keys", list(keys)))
        if statuses is not None:
            where.append("status IN (SELECT unnest($statuses))")
            params.append(("statuses", list(statuses)))
        sql = "SELECT * FROM chain_actions" + (" WHERE " + " AND ".join(where) if where else "")
        if not self.path.exists():
            return {}
        with self.writer() as con:
            cur = con.execute(sql, dict(params))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        for r in rows:
            if r.get("signed_tx_bytes") is not None:
                r["signed_tx_bytes"] = bytes(r["signed_tx_bytes"])
        return {r["idempotency_key"]: r for r in rows}

    # ------------------------------------------------------------------------------------------ analyst reads
    def _view(self, name: str, where: str = "", params: list | None = None) -> pd.DataFrame:
        return self.query(f"SELECT * FROM {name} {where}", params)

    def earnings(self, by: str = "node") -> pd.DataFrame:
        """Earnings (node fees paid at claims + attester credits) by ``node``, ``task``, ``epoch`` or
        ``epoch_node``. Amounts in USDC base units."""
        view = EARNINGS_VIEWS.get(by)
        if view is None:
            raise ValueError(f"earnings(by=...) takes one of {sorted(EARNINGS_VIEWS)}, not {by!r}")
        return self._view(view)

    def refunds(self) -> pd.DataFrame:
        """Per buyer: stacks bought, paid, refunded, net spent, paid for disputed stacks."""
        return self._view("refunds_by_buyer")

    def stacks(self) -> pd.DataFrame:
        """Stack utilisation: units bought, served (usage rows), claimed, status."""
        return self._view("stack_utilisation")

    def latency(self) -> pd.DataFrame:
        """Per node and task: requests, those with recorded times, p50/p99/mean latency and time to first token
        (ms, from the usage rows' ``latency_ms`` and ``ttft_ms``)."""
        return self._view("request_latency")

    def tickets(self, *, include_claimed: bool = False) -> pd.DataFrame:
        """Open tickets with the epoch each becomes claimable and the last epoch attestations are accepted."""
        if include_claimed:
            return self._view("stack_settlement_tickets", "ORDER BY stack_small_id")
        return self._view("open_tickets")

    def attestations(self) -> pd.DataFrame:
        return self._view("attestation_status")

    def disputes(self) -> pd.DataFrame:
        return self._view("disputes", "ORDER BY seq")

    def claims(self) -> pd.DataFrame:
        """Per claimed stack: node fee and refund by the protocol math, the event's refund, whether the USDC
        actually received matches."""
        return self._view("claim_accounting", "ORDER BY stack_small_id")

    def usdc_checks(self, *, mismatches_only: bool = False) -> pd.DataFrame:
        return self._view("usdc_mismatches" if mismatches_only else "usdc_checks", "ORDER BY tx_digest, address")

    def usdc_flow(self) -> dict:
        """Paid in, paid out, left in the fee treasury (ledger vs chain), attester credits outstanding, headroom."""
        df = self._view("usdc_flow")
        return {k: (None if pd.isna(v) else int(v)) for k, v in df.iloc[0].items()}

    def sampling_consensus_payouts(self) -> pd.DataFrame:
        return self._view("sampling_consensus_payouts")

    def node_credits(self) -> pd.DataFrame:
        return self._view("node_credit_balances", "ORDER BY node_small_id")

    def usage(self, stack_small_id: int | None = None) -> pd.DataFrame:
        if stack_small_id is None:
            return self._view("usage", "ORDER BY stack_small_id, request_index")
        return self._view("usage", "WHERE stack_small_id = ? ORDER BY request_index", [stack_small_id])

    def usage_feed(self, node_small_id: int) -> dict | None:
        """Where the usage import over HTTP stands with a node: ``{"node_small_id", "node_address", "url", "feed",
        "cursor", "updated_at"}``, or None before its first import."""
        if not self.path.exists():
            return None
        with self.reader() as con:
            cur = con.execute(
                "SELECT node_small_id, node_address, url, feed, cursor, updated_at FROM usage_feeds "
                "WHERE node_small_id = ?", [int(node_small_id)],
            )
            names = [d[0] for d in cur.description]
            row = first(cur.fetchall())
        return None if row is None else dict(zip(names, row))

    def status(self) -> dict:
        """Cursor, event count, chain snapshot."""
        with self.reader() as con:
            cur = first(con.execute("SELECT tx_digest, event_seq, events_indexed, updated_at FROM indexer_cursor").fetchall())
            snap = first(con.execute("SELECT db_id, epoch, synced_at, fee_treasury FROM chain_snapshot").fetchall())
        return {
            "path": str(self.path),
            "cursor": None if cur is None or cur[0] is None else {"txDigest": cur[0], "eventSeq": str(cur[1])},
            "events_indexed": 0 if cur is None else int(cur[2]),
            "db_id": None if snap is None else snap[0],
            "chain_epoch": None if snap is None else int(snap[1]),
            "synced_at": None if snap is None else str(snap[2]),
        }

    # ------------------------------------------------------------------------------------------ reconcile
    async def reconcile(self, chain, *, sync_first: bool = True) -> "ReconcileReport":
        from .reconcile import reconcile

        if sync_first:
            await self.sync(chain)
        return await reconcile(self, chain)

    # ------------------------------------------------------------------------------------------ export
    def export_parquet(self, directory: str | os.PathLike) -> list[Path]:
        """Every table and analyst view as ``DIR/<name>.parquet`` (DuckDB's own writer; no pyarrow needed).

        All or nothing: the files are written in a temporary folder inside ``DIR`` and renamed into place only when
        every one is complete; an existing file of the same name is refused (LedgerError naming it), never replaced.
        """
        out = Path(directory)
        targets = [out / f"{name}.parquet" for name in EXPORTED]
        _refuse_existing(targets)
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
        try:
            with self.reader() as con:
                for name in EXPORTED:
                    con.execute(f"COPY (SELECT * FROM {name}) TO '{_sql_path(staging / (name + '.parquet'))}' (FORMAT parquet)")
            for target in targets:
                _publish(staging / target.name, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return targets

    def snapshot(self, target: str | os.PathLike) -> Path:
        """A standalone copy of the ledger (tables and views) that analysts can keep open as long as they like.

        Written under a temporary name beside ``target`` and renamed into place when complete; an existing
        ``target`` is refused (LedgerError naming it), never replaced."""
        target = Path(target)
        if target.resolve() == self.path.resolve():
            raise LedgerError("the snapshot must be another file than the ledger itself")
        _refuse_existing([target, Path(str(target) + ".wal")])
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        staging = Path(name)
        staging.unlink()  # DuckDB creates the file itself
        try:
            with self.reader() as con:
                source = first(con.execute("SELECT current_database()").fetchall())[0]
                # the storage format DuckDB 1.4 and later read (the analysts' CLI), whatever this package writes by default
                con.execute(
                    f"ATTACH '{_sql_path(staging)}' AS _ledger_snapshot (READ_WRITE, STORAGE_VERSION '{STORAGE_VERSION}')"
                )
                try:
                    con.execute(f'COPY FROM DATABASE "{source}" TO _ledger_snapshot')
                finally:
                    con.execute("DETACH _ledger_snapshot")
            _publish(staging, target)
        finally:
            for leftover in (staging, Path(str(staging) + ".wal")):
                leftover.unlink(missing_ok=True)
        return target

    def plot_earnings(self, out: str | os.PathLike) -> Path:
        from .plot import plot_earnings

        return plot_earnings(self.earnings(by="epoch_node"), out)


def _refuse_existing(targets: list[Path]) -> None:
    for target in targets:
        if target.exists() or target.is_symlink():
            raise LedgerError(f"{target} already exists: remove it or choose another name (exports never replace a file)")


def _publish(staging: Path, target: Path) -> None:
    """Move a complete file into place without replacing one that appeared meanwhile (a hard link fails if
    ``target`` exists)."""
    try:
        os.link(staging, target)
    except FileExistsError:
        raise LedgerError(f"{target} already exists: remove it or choose another name (exports never replace a file)") from None
    except OSError:  # a file system without hard links: check, then rename
        _refuse_existing([target])
        os.replace(staging, target)
        return
    staging.unlink()


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _is_hex_column(df: Any, name: str) -> bool:
    """A pandas column holding hex strings (instead of bytes)."""
    if not isinstance(df, pd.DataFrame):
        return False
    col = df[name]
    if col.dtype != object and not pd.api.types.is_string_dtype(col.dtype):
        return False
    first = col.dropna()
    return len(first) > 0 and isinstance(first.iloc[0], str)
