"""Digests of a localnet home's durable state: the chain, the nodes' stack histories and the ledger.

A failed call must leave all three unchanged; the harness compares these digests before and after. Each digest
hashes the *logical* content (rows in key order), not file bytes, so a checkpoint or a read that touches a file
without changing a row does not count as a change.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from atoma_ops.chain.localnet.engine import CHAIN_FILE
from atoma_ops.ledger.store import LEDGER_FILE

ABSENT = "absent"


@dataclass(frozen=True)
class StateDigests:
    chain: str
    history: str
    ledger: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def changed(self, other: "StateDigests") -> list[str]:
        """The parts that differ between two snapshots."""
        return [k for k, v in self.as_dict().items() if other.as_dict()[k] != v]


def _sqlite_digest(path: Path, h, where: dict[str, str] | None = None) -> None:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for table in tables:
            h.update(f"\x00table {table}\x00".encode())
            condition = f" WHERE {where[table]}" if where and table in where else ""
            for row in con.execute(f'SELECT * FROM "{table}"{condition} ORDER BY 1'):
                h.update(repr(row).encode())
    finally:
        con.close()


def chain_digest(home: Path) -> str:
    """Every table of the localnet's SQLite file (objects, events, successful transactions, clock, rng).

    A transaction the contract refused is recorded, as Sui records it, under its digest, and changes nothing else:
    it is left out, so a refused call shows as no change while any effect of it would not."""
    path = Path(home) / CHAIN_FILE
    if not path.exists():
        return ABSENT
    h = hashlib.blake2b(digest_size=16)
    _sqlite_digest(path, h, where={"transactions": "status = 'success'"})
    return h.hexdigest()


def history_digest(home: Path) -> str:
    """Every node store under ``<home>/nodes`` (reservations, histories, settlement state) and any JSONL history
    export beside it."""
    h = hashlib.blake2b(digest_size=16)
    root = Path(home) / "nodes"
    if not root.exists():
        return ABSENT
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".sqlite":
            h.update(f"\x00store {rel}\x00".encode())
            _sqlite_digest(path, h)
        elif path.suffix in (".jsonl", ".json"):
            h.update(f"\x00file {rel}\x00".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def ledger_file_digest(path: Path, skip_columns: dict[str, set[str]] | None = None) -> str:
    """Every table of a ledger's DuckDB file (opened read-only for the one read), without ``skip_columns``
    (table -> column names: a sync's wall-clock time, say, when two ledgers built from the same events must match)."""
    import duckdb

    skip_columns = skip_columns or {}
    h = hashlib.blake2b(digest_size=16)
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY table_name"
        ).fetchall()]
        for table in tables:
            columns = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall() if r[0] not in skip_columns.get(table, set())]
            h.update(f"\x00table {table} {columns}\x00".encode())
            quoted = ", ".join(f'"{c}"' for c in columns)
            for row in con.execute(f'SELECT {quoted} FROM "{table}" ORDER BY ALL').fetchall():
                h.update(repr(row).encode())
    finally:
        con.close()
    return h.hexdigest()


def ledger_digest(home: Path) -> str:
    """Every table of the home's ledger."""
    path = Path(home) / LEDGER_FILE
    return ledger_file_digest(path) if path.exists() else ABSENT


def state_digests(home: str | Path) -> StateDigests:
    home = Path(home)
    return StateDigests(chain=chain_digest(home), history=history_digest(home), ledger=ledger_digest(home))
