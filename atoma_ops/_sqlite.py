"""SQLite as the localnet and the node stores use it: WAL, synchronous=FULL, one BEGIN IMMEDIATE per write."""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Iterator


def connect_wal(path: str | os.PathLike, busy_timeout_s: float) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL and synchronous=FULL.

    Switching a new file to WAL needs an exclusive lock and SQLite does not run the busy handler for it: two
    processes opening a fresh file at once get SQLITE_BUSY there, so that step is retried until the busy timeout.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=False)
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: ``BEGIN IMMEDIATE``, COMMIT on success, ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
