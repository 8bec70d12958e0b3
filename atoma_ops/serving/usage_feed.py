"""The node store's served requests as a feed: every history record gets a sequence number when it is stored, and a
reader pages through them in that order by a cursor (``seq > after``), so the ledger on another host imports
incrementally — resuming from the last cursor it stored — and never misses a request.

The sequence is a ``usage_seq`` table (``seq INTEGER PRIMARY KEY AUTOINCREMENT``) filled by a trigger on
``history``: the row is added in the same transaction as the history record, and since every write to the store
is one ``BEGIN IMMEDIATE`` transaction (writers take turns), sequence numbers are committed in increasing order —
a reader that has seen ``seq = n`` will never later see a new row below ``n``. A per-stack ``(stack, index)``
order would not do: a stack served later may have a smaller id. ``AUTOINCREMENT`` never reuses a number.

The trigger is installed with the store's schema when a node store opens the file (:func:`install_usage_feed`,
in the same transaction); records already there (a store from before the feed existed) get sequence numbers then,
in the order they were served, so no record is numbered twice or missed. The feed has an id (``meta.usage_feed``, random): a reader that finds another
id is reading another store (a new file for the node) and starts over; the ledger skips the rows it already has.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from .._sqlite import connect_wal, immediate

FEED_KEY = "usage_feed"

_DDL = (
    "CREATE TABLE IF NOT EXISTS usage_seq (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "stack_small_id INTEGER NOT NULL, idx INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS usage_seq_on_history AFTER INSERT ON history BEGIN "
    "INSERT INTO usage_seq (stack_small_id, idx) VALUES (NEW.stack_small_id, NEW.idx); END",
)

_PAGE = (
    "SELECT u.seq, h.stack_small_id, h.idx, h.request_id, h.response, h.units, h.reserved_units, h.payload_hash, "
    "h.response_hash, h.served_at_ms, h.arrived_ms, h.first_token_ms "
    "FROM usage_seq u JOIN history h ON h.stack_small_id = u.stack_small_id AND h.idx = u.idx "
    "WHERE u.seq > ? ORDER BY u.seq LIMIT ?"
)


def install_usage_feed(c: sqlite3.Connection) -> str:
    """Inside the caller's write transaction: install the sequence if it is not there (numbering the records
    already stored, in serving order); returns the feed's id. The node store does it when it opens a file."""
    row = c.execute("SELECT value FROM meta WHERE key = ?", (FEED_KEY,)).fetchone()
    if row is not None:
        return row[0]
    for statement in _DDL:
        c.execute(statement)
    c.execute(
        "INSERT INTO usage_seq (stack_small_id, idx) SELECT stack_small_id, idx FROM history "
        "ORDER BY served_at_ms, stack_small_id, idx"
    )
    feed = uuid.uuid4().hex
    c.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (FEED_KEY, feed))
    return feed


def ensure_usage_feed(path: str | os.PathLike, busy_timeout_s: float = 60.0) -> str:
    """The feed id of the store at ``path``, installing the sequence if it is not there (a store last opened by an
    older atoma-ops). Idempotent; safe while other processes serve from the store."""
    conn = connect_wal(Path(path), busy_timeout_s)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (FEED_KEY,)).fetchone()
        if row is not None:
            return row[0]
        with immediate(conn) as c:
            return install_usage_feed(c)
    finally:
        conn.close()


@dataclass(frozen=True)
class UsagePage:
    """Rows after ``after`` (at most the limit asked for), ``next``: the cursor to ask with next (the last row's
    ``seq``, or ``after`` when there are none), ``has_more``: whether rows after ``next`` exist already."""

    feed: str
    after: int
    next: int
    has_more: bool
    rows: list[dict]

    def to_json(self) -> dict:
        return {"feed": self.feed, "after": self.after, "next": self.next, "has_more": self.has_more, "rows": self.rows}


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _row(r: tuple) -> dict:
    seq, stack, idx, request_id, response, units, reserved, payload, resp_hash, served_at, arrived, first_token = r
    usage = (orjson.loads(response).get("usage") or {}) if response else {}
    return {
        "seq": seq,
        "stack_small_id": stack,
        "request_index": idx,
        "request_id": request_id,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "estimated_units": reserved,
        "actual_units": units,
        "payload_hash": _hex(payload),
        "response_hash": _hex(resp_hash),
        "served_at_ms": served_at,
        "arrived_ms": arrived,
        "first_token_ms": first_token,
    }


def usage_page(path: str | os.PathLike, feed: str, after: int, limit: int) -> UsagePage:
    """The served requests numbered after ``after``, in sequence order, at most ``limit`` (read-only; the feed
    must have been installed by :func:`ensure_usage_feed`)."""
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(_PAGE, (after, limit + 1)).fetchall()
    finally:
        conn.close()
    page = [_row(r) for r in rows[:limit]]
    return UsagePage(feed, after, page[-1]["seq"] if page else after, len(rows) > limit, page)
