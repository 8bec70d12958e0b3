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
    (table -> column names: a sync's wall-clock time, say, when two ledgers built from the same events must match).

    The rows are read once per distinct content of the file and its WAL: the digest is remembered under a hash of
    their bytes (the same bytes hold the same rows), so a ledger that no call touched, or a byte-for-byte copy of one,
    costs a read of its bytes (~10 ms), not a DuckDB open and a query of every table (~0.3 s)."""
    skip_columns = skip_columns or {}
    key = (_bytes_key(Path(path)), tuple(sorted((t, tuple(sorted(c))) for t, c in skip_columns.items())))
    digest = _LEDGER_DIGESTS.get(key)
    if digest is None:
        digest = _ledger_rows_digest(Path(path), skip_columns)
        if len(_LEDGER_DIGESTS) >= 4096:
            _LEDGER_DIGESTS.clear()
        _LEDGER_DIGESTS[key] = digest
    return digest


#: (hash of a DuckDB file's bytes and its WAL's, skip_columns) -> the digest of its rows
_LEDGER_DIGESTS: dict[tuple, str] = {}


def _bytes_key(path: Path) -> str:
    """A hash of the bytes of ``path`` and of its write-ahead log (or of their absence)."""
    h = hashlib.sha256()  # sha256: the fastest strong hash here (CPU instructions), ~1 ms a MB
    for part in (path, path.with_name(path.name + ".wal")):
        try:
            with open(part, "rb") as f:
                h.update(b"\x00file\x00" + hashlib.file_digest(f, "sha256").digest())
        except FileNotFoundError:
            h.update(b"\x00absent\x00")
    return h.hexdigest()


def _ledger_rows_digest(path: Path, skip_columns: dict[str, set[str]]) -> str:
    import duckdb

    h = hashlib.blake2b(digest_size=16)
    con = duckdb.connect(str(path), read_only=True)
    try:
        # every base table's columns in one catalog query (information_schema.columns costs ~20 ms a table)
        columns_of: dict[str, list[str]] = {}
        for table, column in con.execute(
            "SELECT t.table_name, c.column_name FROM duckdb_tables() t LEFT JOIN duckdb_columns() c "
            "USING (database_oid, schema_oid, table_oid) ORDER BY t.table_name, c.column_index"
        ).fetchall():
            columns = columns_of.setdefault(table, [])
            if column is not None and column not in skip_columns.get(table, set()):
                columns.append(column)
        for table, columns in columns_of.items():
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
