"""Per-request usage from the nodes' serving stores (``<home>/nodes/<alias>/serving.sqlite``) into the ledger.

The serving store is the node's source of truth for what it served; the ledger keeps a copy for analysis. Rows
already in the ledger are skipped by ``append_usage``, so importing again after more serving adds only the new
requests.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pandas as pd

STORE_GLOB = "nodes/*/serving.sqlite"


def read_store_usage(store_path: str | os.PathLike) -> pd.DataFrame:
    """One row per served request of one node store, in the ledger's ``usage`` columns."""
    uri = f"file:{Path(store_path)}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT stack_small_id, idx, response, units, reserved_units, payload_hash, response_hash, served_at_ms "
            "FROM history ORDER BY stack_small_id, idx"
        ).fetchall()
    finally:
        conn.close()
    records = []
    for stack, idx, response, units, reserved, payload, resp_hash, served_at in rows:
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
            }
        )
    columns = [
        "stack_small_id", "request_index", "prompt_tokens", "completion_tokens", "estimated_units", "actual_units",
        "payload_hash", "response_hash", "served_at_ms",
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def node_stores(home: str | os.PathLike) -> list[Path]:
    return sorted(Path(home).glob(STORE_GLOB))


def import_node_usage(ledger, home: str | os.PathLike) -> int:
    """Append every node store's served requests under ``home`` to the ledger; returns the rows added."""
    added = 0
    for store in node_stores(home):
        frame = read_store_usage(store)
        if len(frame):
            added += ledger.append_usage(frame)
    return added
