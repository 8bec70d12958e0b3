"""Helpers shared by the ledger tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb

# columns that hold the wall-clock time of a sync, not chain data
VOLATILE = {
    "indexer_cursor": {"updated_at"},
    "chain_snapshot": {"synced_at"},
    "schema_migrations": {"applied_at"},
}


def ledger_digest(path: Path) -> str:
    """A hash of every table's rows (ordered), minus sync wall-clock columns: two ledgers built from the same
    events hash the same."""
    h = hashlib.blake2b(digest_size=32)
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY table_name"
        ).fetchall()]
        for t in tables:
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", [t]
            ).fetchall() if r[0] not in VOLATILE.get(t, set())]
            quoted = ", ".join(f'"{c}"' for c in cols)
            rows = con.execute(f"SELECT {quoted} FROM {t} ORDER BY ALL").fetchall()
            h.update(repr((t, cols, rows)).encode())
    finally:
        con.close()
    return h.hexdigest()
