"""Helpers shared by the ledger tests."""

from __future__ import annotations

from pathlib import Path

from reliability.digests import ledger_file_digest

# columns that hold the wall-clock time of a sync, not chain data
VOLATILE = {
    "indexer_cursor": {"updated_at"},
    "chain_snapshot": {"synced_at"},
    "schema_migrations": {"applied_at"},
}


def ledger_digest(path: Path) -> str:
    """A hash of every table's rows (ordered), minus sync wall-clock columns: two ledgers built from the same
    events hash the same."""
    return ledger_file_digest(path, VOLATILE)
