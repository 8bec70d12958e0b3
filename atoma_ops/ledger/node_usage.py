"""Per-request usage from the nodes' serving stores (``<home>/nodes/<alias>/serving.sqlite``) into the ledger.

The serving store is the node's source of truth for what it served; the ledger keeps a copy for analysis. Rows
already in the ledger are skipped by ``append_usage``, so importing again after more serving adds only the new
requests. Times come along where the store has them: ``latency_ms`` (arrival to finish) and ``ttft_ms`` (arrival
to first token).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pandas as pd

from .store import LedgerError
from ..home import node_store_paths



#: history columns added when the node began recording per-request times (served_at_ms = when it finished)
TIME_COLUMNS = ("arrived_ms", "first_token_ms")

USAGE_COLUMNS = [
    "stack_small_id", "request_index", "prompt_tokens", "completion_tokens", "estimated_units", "actual_units",
    "payload_hash", "response_hash", "served_at_ms", "latency_ms", "ttft_ms",
]


def _elapsed(start: int | None, end: int | None) -> float | None:
    """``end - start`` in ms, or None when either time was not recorded."""
    if start is None or end is None:
        return None
    return float(end - start)


def read_store_usage(store_path: str | os.PathLike) -> pd.DataFrame:
    """One row per served request of one node store, in the ledger's ``usage`` columns.

    ``latency_ms`` = ``served_at_ms − arrived_ms`` (arrival to the last token) and ``ttft_ms`` =
    ``first_token_ms − arrived_ms`` (arrival to the first token). Stores written before the node recorded arrival
    and first-token times have no such columns (``PRAGMA table_info`` says which are there), and rows recorded
    without them hold NULL: both give NULL, never a made-up 0.
    """
    path = Path(store_path)
    if not path.is_file():
        raise LedgerError(f"the node store {path} is not a regular file")
    uri = f"file:{path}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            present = {row[1] for row in conn.execute("PRAGMA table_info(history)").fetchall()}
            if not present:
                raise LedgerError(f"the node store {path} has no history table: it is not a serving store")
            times = ", ".join(c if c in present else f"NULL AS {c}" for c in TIME_COLUMNS)
            rows = conn.execute(
                "SELECT stack_small_id, idx, response, units, reserved_units, payload_hash, response_hash, served_at_ms, "
                f"{times} FROM history ORDER BY stack_small_id, idx"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"the node store {path} cannot be read: {exc}") from None
    records = []
    for stack, idx, response, units, reserved, payload, resp_hash, served_at, arrived, first_token in rows:
        usage = (json.loads(response).get("usage") or {}) if response else {}
        records.append(
            {
                "stack_small_id": stack,
                "request_index": idx,
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "estimated_units": reserved,
                "actual_units": units,
                "payload_hash": bytes(payload),
                "response_hash": bytes(resp_hash),
                "served_at_ms": served_at,
                "latency_ms": _elapsed(arrived, served_at),
                "ttft_ms": _elapsed(arrived, first_token),
            }
        )
    frame = pd.DataFrame.from_records(records, columns=USAGE_COLUMNS)
    # all-None columns would come out as object dtype: make them floats (NaN) so DuckDB casts them to DOUBLE NULL
    return frame.astype({"latency_ms": "float64", "ttft_ms": "float64"})


def node_stores(home: str | os.PathLike) -> list[Path]:
    return node_store_paths(home)


def import_node_usage(ledger, home: str | os.PathLike) -> int:
    """Append every node store's served requests under ``home`` to the ledger; returns the rows added."""
    added = 0
    for store in node_stores(home):
        frame = read_store_usage(store)
        if len(frame):
            added += ledger.append_usage(frame)
    return added
