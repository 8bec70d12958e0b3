"""Opening the ledger file: one unit of work per connection, bounded retries when another process holds it.

DuckDB lets one process hold a database file read-write and then refuses every other process, readers included.
So nothing here keeps a connection past one unit of work (one indexer batch, one query, one append), and an opener
that meets the lock retries with exponential backoff (and jitter) until ``timeout_s``, then raises
:class:`LedgerBusy` with the holder's pid when DuckDB names it. Analysts who want a session that stays open query an
exported snapshot (``Ledger.snapshot`` / ``atoma-ops ledger export``), never the live file.

Every file is written in DuckDB's v1.4 storage format (:data:`STORAGE_VERSION`), which DuckDB 1.4 and every later
release read — the DuckDB CLI analysts install included. The Python package's own default is its newest format,
which older readers refuse ("database file with version number …, but we can only read versions between …"). A
ledger written in a newer format before is rewritten once in this one by the next process that opens it.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from ..core.errors import ErrorClass
from ..home import LEDGER_FILE  # noqa: F401 - the home owns the layout; the ledger package names it too
from .migrations import LATEST_VERSION, apply_migrations, current_version

DEFAULT_LOCK_TIMEOUT_S = 30.0
#: the storage format of every ledger and snapshot: readable by DuckDB 1.4 and later (its header's version number
#: is 67; DuckDB 1.4 reads 64-67, 1.5 reads 64-68)
STORAGE_VERSION = "v1.4.0"
#: every connection to a ledger file (one configuration per file and process: DuckDB refuses a second one).
#: Extensions are never installed or loaded on demand: nothing downloads at run time (DuckDB would otherwise fetch
#: ``sqlite_scanner`` to open a SQLite file given as the ledger).
CONFIG = {
    "storage_compatibility_version": STORAGE_VERSION,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}
#: a DuckDB database file says so at bytes 8..12
_DUCKDB_MAGIC = b"DUCK"

#: the lock retries' jitter, from a generator of its own: the process's global `random` state stays its users' (a
#: seeded simulation, a property test's draws) whatever thread waits for the ledger
_JITTER = random.Random()


class LedgerError(Exception):
    """A ledger problem the user can act on (exit 1 in the CLI)."""


class LedgerBusy(LedgerError):
    """Another process held the ledger file for longer than the lock timeout."""

    error_class = ErrorClass.RETRYABLE


class LedgerNotFound(LedgerError):
    """No ledger file yet (a read needs a sync first)."""


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    # the last: another unit of work of this same process holds the file read-write while we open it read-only,
    # or the other way round (concurrent flows in one worker); it is released as soon as that unit ends
    return "could not set lock" in text or "conflicting lock" in text or "with a different configuration" in text


def _holder(exc: BaseException) -> str:
    match = re.search(r"conflicting lock is held in (.+?) \(pid (\d+)\)", str(exc), re.IGNORECASE)
    if match:
        return f"pid {match.group(2)} ({match.group(1)})"
    return "another unit of work of this process" if "different configuration" in str(exc) else "another process"


def connect(
    path: str | os.PathLike,
    *,
    read_only: bool = False,
    timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    first_delay_s: float = 0.005,
    max_delay_s: float = 0.25,
) -> duckdb.DuckDBPyConnection:
    """Open ``path``; on a lock conflict wait (5 ms doubling to 250 ms, ±50 % jitter) up to ``timeout_s``."""
    path = Path(path)
    if read_only and not path.exists():
        raise LedgerNotFound(f"no ledger at {path}: run `atoma-ops ledger sync` first")
    check_ledger_file(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    delay = first_delay_s
    attempts = 0
    while True:
        attempts += 1
        try:
            return duckdb.connect(str(path), read_only=read_only, config=CONFIG)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if isinstance(exc, duckdb.ConnectionException) and not _is_lock_error(exc):
                raise
            if not _is_lock_error(exc):
                # not a lock: a path that is a directory, a file that is no DuckDB database, no permission
                raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
            waited = time.monotonic() - start
            if waited >= timeout_s:
                raise LedgerBusy(
                    f"the ledger {path} is held by {_holder(exc)}; gave up after {waited:.1f} s and {attempts} tries. "
                    "A sync or an open analyst session holds it: wait for it and retry, raise the lock timeout, "
                    "or query an exported snapshot (`atoma-ops ledger export`) instead of the live file."
                ) from None
            time.sleep(min(delay, max(0.0, timeout_s - waited)) * _JITTER.uniform(0.5, 1.5))
            delay = min(delay * 2, max_delay_s)


def check_ledger_file(path: Path) -> None:
    """Refuse, by name, a ledger path that is not a DuckDB database: a directory, a FIFO or device, a SQLite or
    any other file (an empty file is refused too: DuckDB cannot open it). A missing file is fine (a sync creates
    it)."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise LedgerError(f"the ledger {path} is a directory, not a DuckDB file")
    if not stat.S_ISREG(st.st_mode):
        raise LedgerError(f"the ledger {path} is not a regular file (a FIFO, socket or device)")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc.strerror}") from None
    if head[8:12] != _DUCKDB_MAGIC:
        what = "a SQLite database" if head.startswith(b"SQLite format 3") else "empty" if not head else "another kind of file"
        raise LedgerError(f"the ledger {path} is not a DuckDB ledger ({what})")


_file_locks: dict[str, threading.RLock] = {}
_file_locks_guard = threading.Lock()


def _file_lock(path: Path) -> threading.RLock:
    key = os.path.abspath(path)
    with _file_locks_guard:
        return _file_locks.setdefault(key, threading.RLock())


@contextmanager
def unit_of_work(
    path: str | os.PathLike, *, read_only: bool = False, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for one unit of work, closed on exit (which releases the file lock).

    Units of work on one file are serialised within the process too: concurrent flows in one worker otherwise
    share DuckDB's per-process database instance, and opening it read-only while another thread holds it
    read-write fails ("different configuration"), as does a ``register``ed DataFrame scan while another thread is
    re-creating the instance (``pandas_scan does not exist``); both were seen with 8 concurrent flows.
    """
    with _file_lock(Path(path)):
        con = connect(path, read_only=read_only, timeout_s=timeout_s)
        try:
            yield con
        finally:
            con.close()


def ensure_schema(path: str | os.PathLike, *, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
    """Create the file or migrate it to the latest schema and to :data:`STORAGE_VERSION` (a read-only look first,
    so readers rarely write)."""
    path = Path(path)
    if path.exists():
        with unit_of_work(path, read_only=True, timeout_s=timeout_s) as con:
            readable = _version_tuple(storage_version(con)) <= _version_tuple(STORAGE_VERSION)
            if readable and current_version(con) == LATEST_VERSION:
                return
        if not readable:
            rewrite_storage(path, timeout_s=timeout_s)
    with unit_of_work(path, timeout_s=timeout_s) as con:
        apply_migrations(con)


def storage_version(con: duckdb.DuckDBPyConnection, database: str | None = None) -> str:
    """The storage format a database file was created with, as DuckDB names it (``v1.4.0+``)."""
    row = con.execute(
        "SELECT tags['storage_version'] FROM duckdb_databases() WHERE database_name = coalesce(?, current_database())",
        [database],
    ).fetchone()
    value = row[0] if row else None
    if isinstance(value, list):  # a MAP lookup returns a list in some DuckDB releases
        value = value[0] if value else None
    return value or STORAGE_VERSION


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def rewrite_storage(path: str | os.PathLike, *, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
    """Rewrite the ledger ``path`` in :data:`STORAGE_VERSION` (once, for a file written in a newer format).

    The write-ahead log is checkpointed first; the copy (tables, views, sequences) goes to ``<path>.rewrite`` and
    replaces the file while the old one is still attached, so no writer can slip in between; a crash leaves the old
    file whole (and a stray ``.rewrite`` file, replaced next time)."""
    path = Path(path)
    tmp = Path(str(path) + ".rewrite")
    with _file_lock(path):
        con = connect(path, timeout_s=timeout_s)
        try:
            con.execute("CHECKPOINT")
        finally:
            con.close()
        for suffix in ("", ".wal"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
        con = duckdb.connect(config=CONFIG)
        try:
            start = time.monotonic()
            while True:
                try:
                    con.execute(f"ATTACH '{_sql(path)}' AS old_ledger (READ_ONLY)")
                    break
                except (duckdb.IOException, duckdb.ConnectionException) as exc:
                    if not _is_lock_error(exc) or time.monotonic() - start >= timeout_s:
                        raise LedgerError(f"cannot rewrite the ledger {path}: {exc}") from None
                    time.sleep(0.05)
            con.execute(f"ATTACH '{_sql(tmp)}' AS new_ledger (STORAGE_VERSION '{STORAGE_VERSION}')")
            con.execute("COPY FROM DATABASE old_ledger TO new_ledger")
            con.execute("DETACH new_ledger")
            os.replace(tmp, path)
            con.execute("DETACH old_ledger")
        finally:
            con.close()
            Path(str(tmp) + ".wal").unlink(missing_ok=True)


def _sql(path: Path) -> str:
    return str(path).replace("'", "''")
