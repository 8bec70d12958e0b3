"""The intent journal on PostgreSQL: the :class:`~atoma_ops.journal.JournalStore` that several hosts share.

The DuckDB ledger's ``chain_actions`` table is the embedded default: one file, one writing process at a time, on one
machine. When settlement and serving run on several hosts (a Prefect worker per GPU host), their chain writes must
still happen exactly once, so the journal moves to a database every host reaches: PostgreSQL, through psycopg 3.

The crash semantics are the DuckDB journal's: a row is journaled ``pending`` with the signed bytes and the digest,
and committed, before those bytes are submitted. What the shared database adds is :meth:`PostgresJournal.claim_actions`:
the pending row is written with ``INSERT … ON CONFLICT DO UPDATE … WHERE`` (the key is the primary key), so of two
hosts that signed the same intent at once exactly one commits its bytes and submits them; the other finds the key
taken and waits for the winner's outcome. One key, one signed transaction, so the chain executes it at most once.

Chosen by configuration (:func:`open_journal`): a ``postgresql://`` URL in the ``AtomaNetwork`` block's
``journal_url``, the CLI's ``--journal-url`` or ``$ATOMA_OPS_JOURNAL_URL``; without one, the ledger is the journal.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator

from .chain._json import dumps
from .core.errors import ErrorClass

if TYPE_CHECKING:  # pragma: no cover
    import psycopg

    from .journal import JournalStore

#: where the CLI and the blocks read the journal's URL when none is given
JOURNAL_URL_ENV = "ATOMA_OPS_JOURNAL_URL"

_FIELDS = (
    "idempotency_key", "kind", "stack_small_id", "stack_small_ids", "status", "sender", "args", "signed_tx_bytes",
    "signature", "digest", "last_error_code", "last_error",
)
_KEPT = ("stack_small_id", "stack_small_ids", "sender", "args", "signed_tx_bytes", "signature", "digest",
         "last_error_code", "last_error")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chain_actions (
    idempotency_key     TEXT PRIMARY KEY,
    kind                TEXT NOT NULL,
    stack_small_id      BIGINT,
    stack_small_ids     BIGINT[],
    status              TEXT NOT NULL,
    sender              TEXT,
    args                JSONB,
    signed_tx_bytes     BYTEA,
    signature           TEXT,
    digest              TEXT,
    attempts            BIGINT NOT NULL DEFAULT 0,
    last_error_code     TEXT,
    last_error          TEXT,
    created_at          TIMESTAMP NOT NULL,
    updated_at          TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS chain_actions_status ON chain_actions (status);
"""

_UPSERT = (
    "INSERT INTO chain_actions (idempotency_key, kind, stack_small_id, stack_small_ids, status, sender, args, "
    "signed_tx_bytes, signature, digest, attempts, last_error_code, last_error, created_at, updated_at) "
    "VALUES (%(idempotency_key)s, %(kind)s, %(stack_small_id)s, %(stack_small_ids)s, %(status)s, %(sender)s, "
    "%(args)s::jsonb, %(signed_tx_bytes)s, %(signature)s, %(digest)s, %(attempts)s, %(last_error_code)s, "
    "%(last_error)s, %(now)s, %(now)s) "
    "ON CONFLICT (idempotency_key) DO UPDATE SET kind = excluded.kind, status = excluded.status, "
    + ", ".join(f"{c} = COALESCE(excluded.{c}, chain_actions.{c})" for c in _KEPT)
    + ", attempts = chain_actions.attempts + excluded.attempts, updated_at = excluded.updated_at"
)
# a claim updates an existing row only where it is free; under READ COMMITTED a concurrent claim of the same key
# waits for the first to commit and then sees its ``pending`` row, so it updates nothing and returns nothing
_CLAIM = (
    _UPSERT
    + " WHERE chain_actions.status <> 'pending' AND (chain_actions.status = 'failed' OR %(repeatable)s)"
    + " RETURNING idempotency_key"
)


class JournalUnavailable(ConnectionError):
    """The journal's database cannot be reached or refused the connection (retryable: nothing was written)."""

    kind = "JournalUnavailable"
    error_class = ErrorClass.RETRYABLE


class JournalBusy(ConnectionError):
    """The journal's transaction was rolled back in favour of a concurrent one (retryable: nothing was written)."""

    kind = "JournalBusy"
    error_class = ErrorClass.RETRYABLE


class JournalConfigError(ValueError):
    """The journal URL is not one this build can open (terminal: a configuration to fix)."""

    kind = "JournalConfigError"
    error_class = ErrorClass.TERMINAL


class PostgresJournal:
    """The intent journal in a PostgreSQL database (``chain_actions``, created on first use).

    Args:
        url: a libpq connection URL, ``postgresql://user:password@host:port/dbname``.
        connect_timeout_s: how long opening a connection may take before :class:`JournalUnavailable`.

    One connection per process and store, opened on first use and re-opened after a fork or a lost connection;
    every method is one transaction.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0):
        if not url.startswith(("postgresql://", "postgres://")):
            raise JournalConfigError("a journal URL starts with postgresql:// (user:password@host:port/dbname)")
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._con: "psycopg.Connection | None" = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._schema_checked = False

    def __repr__(self) -> str:  # never the password
        return f"PostgresJournal({redact(self.url)!r})"

    # ------------------------------------------------------------------------------------------ connection
    @contextmanager
    def _transaction(self) -> Iterator["psycopg.Cursor"]:
        import psycopg

        with self._lock:
            try:
                con = self._connection()
                with con.transaction():
                    with con.cursor() as cur:
                        yield cur
            except psycopg.errors.TransactionRollback as exc:  # a deadlock or serialisation failure: nothing written
                raise JournalBusy(f"the journal's transaction gave way to another writer's: {exc}") from None
            except psycopg.OperationalError as exc:
                self._drop()
                raise JournalUnavailable(f"the journal database {redact(self.url)} is unavailable: {exc}") from None
            except psycopg.InterfaceError as exc:
                self._drop()
                raise JournalUnavailable(f"the journal's connection to {redact(self.url)} broke: {exc}") from None

    def _connection(self) -> "psycopg.Connection":
        import psycopg

        if self._con is not None and (self._pid != os.getpid() or self._con.closed):
            self._con = None  # a forked child never uses its parent's socket
        if self._con is None:
            try:
                self._con = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s)))
            except psycopg.ProgrammingError:  # a malformed URL (libpq's message may quote it, password and all)
                raise JournalConfigError(f"cannot parse the journal URL {redact(self.url)}") from None
            self._pid = os.getpid()
            if not self._schema_checked:
                self._ensure_schema(self._con)
        return self._con

    def _drop(self) -> None:
        if self._con is not None and self._pid == os.getpid():
            try:
                self._con.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
        self._con = None

    def _ensure_schema(self, con: "psycopg.Connection") -> None:
        """Create the journal's tables once (two hosts starting at once take turns on an advisory lock)."""
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(hashtext('atoma_ops.journal'))")
            con.execute(_SCHEMA)
            row = con.execute("SELECT max(version) FROM journal_schema").fetchone()
            version = row[0] if row else None
            if version is None:
                con.execute("INSERT INTO journal_schema VALUES (%s)", [SCHEMA_VERSION])
            elif version > SCHEMA_VERSION:
                raise JournalConfigError(
                    f"the journal database has schema version {version}; this atoma-ops knows up to {SCHEMA_VERSION}"
                )
        self._schema_checked = True

    def close(self) -> None:
        with self._lock:
            self._drop()

    # ------------------------------------------------------------------------------------------ JournalStore
    def record_actions(self, rows: list[dict]) -> None:
        """Insert or update journal rows in one transaction (the fields of ``Ledger.record_actions``; fields left
        out or None keep their stored value)."""
        if not rows:
            return
        params = _params(rows)
        with self._transaction() as cur:
            cur.executemany(_UPSERT, params)

    def claim_actions(self, rows: list[dict]) -> list[str]:
        """Journal ``rows`` as ``pending``, each only where its key is free (no row, or a row not ``pending`` that
        is ``failed`` or, for a row marked ``repeatable``, finished). One transaction; returns the keys claimed."""
        if not rows:
            return []
        params = _params(rows)
        claimed: list[str] = []
        with self._transaction() as cur:
            cur.executemany(_CLAIM, params, returning=True)
            while True:
                claimed.extend(r[0] for r in cur.fetchall())
                if not cur.nextset():
                    break
        return claimed

    def actions(self, keys: list[str] | None = None, *, statuses: list[str] | None = None) -> dict[str, dict]:
        """The journal rows for ``keys`` (all when None), optionally only those in ``statuses``, by key."""
        where, params = [], []
        if keys is not None:
            if not keys:
                return {}
            where.append("idempotency_key = ANY(%s)")
            params.append(list(keys))
        if statuses is not None:
            where.append("status = ANY(%s)")
            params.append(list(statuses))
        sql = (
            "SELECT idempotency_key, kind, stack_small_id, stack_small_ids, status, sender, args::text AS args, "
            "signed_tx_bytes, signature, digest, attempts, last_error_code, last_error, created_at, updated_at "
            "FROM chain_actions" + (" WHERE " + " AND ".join(where) if where else "")
        )
        with self._transaction() as cur:
            cur.execute(sql, params)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        for r in rows:
            if r["signed_tx_bytes"] is not None:
                r["signed_tx_bytes"] = bytes(r["signed_tx_bytes"])
        return {r["idempotency_key"]: r for r in rows}


def _params(rows: list[dict]) -> list[dict[str, Any]]:
    """One parameter set per row, in key order: two writers' batches lock shared keys in the same order, so they
    never deadlock."""
    unknown = {k for r in rows for k in r} - set(_FIELDS) - {"attempt", "repeatable"}
    if unknown:
        raise ValueError(f"record_actions: unknown field(s) {sorted(unknown)}")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    out = []
    for r in rows:
        p = {f: r.get(f) for f in _FIELDS}
        p["args"] = None if r.get("args") is None else dumps(r["args"])
        p["stack_small_ids"] = None if r.get("stack_small_ids") is None else [int(i) for i in r["stack_small_ids"]]
        p["attempts"] = 1 if r.get("attempt") else 0
        p["repeatable"] = bool(r.get("repeatable"))
        p["now"] = now
        out.append(p)
    return sorted(out, key=lambda p: p["idempotency_key"])


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_journal(url: str | None, ledger: Any) -> "JournalStore":
    """The journal to write to: PostgreSQL at ``url`` (else at ``$ATOMA_OPS_JOURNAL_URL``) when one is configured,
    else ``ledger`` (the DuckDB ledger's ``chain_actions``, the embedded default)."""
    url = url or os.environ.get(JOURNAL_URL_ENV) or None
    if url is None:
        return ledger
    if url not in _journals:
        _journals[url] = PostgresJournal(url)
    return _journals[url]


#: one store (so one connection) per URL per process: every task of a worker shares it
_journals: dict[str, PostgresJournal] = {}
