"""Per-request usage from the nodes' serving stores (``<home>/nodes/<alias>/serving.sqlite``) into the ledger.

The serving store is the node's source of truth for what it served; the ledger keeps a copy for analysis. Rows
already in the ledger are skipped by ``append_usage``, so importing again after more serving adds only the new
requests. Times come along where the store has them: ``latency_ms`` (arrival to finish) and ``ttft_ms`` (arrival
to first token).

Two ways in, one frame (:func:`usage_frame`) and one write (``Ledger.append_usage``): the stores under a local home
(one host: :func:`import_node_usage`), or a node's ``GET /v1/node/usage`` over HTTP from any host
(:func:`import_node_usage_http`), page by page from the cursor the ledger stored for that node.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Sequence

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
                "payload_hash": payload,
                "response_hash": resp_hash,
                "served_at_ms": served_at,
                "arrived_ms": arrived,
                "first_token_ms": first_token,
            }
        )
    return usage_frame(records)


def _bytes(value: Any) -> bytes:
    """A hash as bytes, from the store's BLOB or the HTTP row's ``0x`` hex."""
    if isinstance(value, str):
        return bytes.fromhex(value[2:] if value.startswith("0x") else value)
    return bytes(value)


def usage_frame(records: Sequence[dict]) -> pd.DataFrame:
    """The ledger's ``usage`` columns for served requests given as records with ``stack_small_id``,
    ``request_index``, ``prompt_tokens``, ``completion_tokens``, ``estimated_units``, ``actual_units``,
    ``payload_hash``, ``response_hash`` (bytes or 0x hex), ``served_at_ms``, ``arrived_ms`` and
    ``first_token_ms`` (what a local store holds, and what a node's ``GET /v1/node/usage`` rows carry)."""
    frame = pd.DataFrame.from_records(
        [
            {
                **{k: r.get(k) for k in ("stack_small_id", "request_index", "prompt_tokens", "completion_tokens",
                                         "estimated_units", "actual_units", "served_at_ms")},
                "payload_hash": _bytes(r["payload_hash"]),
                "response_hash": _bytes(r["response_hash"]),
                "latency_ms": _elapsed(r.get("arrived_ms"), r.get("served_at_ms")),
                "ttft_ms": _elapsed(r.get("arrived_ms"), r.get("first_token_ms")),
            }
            for r in records
        ],
        columns=USAGE_COLUMNS,
    )
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


def insert_with_feed(con: Any, sql: str, feed: dict) -> int:
    """Run ``sql`` (``Ledger.append_usage``'s insert of a page's rows; those present already are skipped) and
    store the feed's new cursor, in one DuckDB transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        added = int(con.execute(sql + " ON CONFLICT DO NOTHING").fetchall()[0][0])
        con.execute(
            "INSERT INTO usage_feeds (node_small_id, node_address, url, feed, cursor, updated_at) "
            "VALUES (?, ?, ?, ?, ?, now()) ON CONFLICT (node_small_id) DO UPDATE SET node_address = excluded.node_address, "
            "url = excluded.url, feed = excluded.feed, cursor = excluded.cursor, updated_at = excluded.updated_at",
            [int(feed["node_small_id"]), str(feed["node_address"]), str(feed["url"]), str(feed["feed"]),
             int(feed["cursor"])],
        )
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - DuckDB may have ended it already: keep the real error
            pass
        raise
    return added


async def import_node_usage_http(ledger, url: str, *, wallet: Any = None, signer: Any = None,
                                 limit: int | None = None) -> dict:
    """Import a node's served usage over HTTP (``GET /v1/node/usage``, signed as the node's operator: with the key
    of the node's own address, from ``wallet``, or by ``signer``, anything with ``address`` and ``sign_hash``), from
    the cursor the ledger stored for that node, page by page; each
    page's rows and the cursor after it commit together, so an interrupted import resumes where it stopped and a
    repeated one adds nothing. A node whose feed id changed (its store was replaced) is read from the start.

    Returns ``{"url", "node_small_id", "rows_added", "pages", "cursor"}``.

    Raises:
        NodeDataError: the node refused a read or could not be reached (rows of pages before stay imported).
        UnknownAddressError: ``wallet`` holds no key of the node's address.
    """
    from ..client.node_data import NodeDataClient
    from ..client.signing import RequestSigner
    from ..protocol.node_reads import DEFAULT_LIMIT

    if (wallet is None) == (signer is None):
        raise ValueError("import_node_usage_http: give the operator's wallet or a signer (one of them)")
    added = pages = 0
    async with NodeDataClient(url, signer) as node:
        health = await node.health()
        node_small_id, address = int(health["node_small_id"]), str(health["address"])
        if signer is None:
            node.signer = RequestSigner(wallet, address)
        stored = ledger.usage_feed(node_small_id)
        cursor, feed = (int(stored["cursor"]), stored["feed"]) if stored else (0, None)
        first_page = await node.usage_page(cursor, limit or DEFAULT_LIMIT)
        if feed is not None and first_page["feed"] != feed:  # another store for this node: from the start
            cursor = 0
            first_page = await node.usage_page(0, limit or DEFAULT_LIMIT)
        page = first_page
        while True:
            pages += 1
            frame = usage_frame(page["rows"])
            state = {"node_small_id": node_small_id, "node_address": address, "url": node.base_url,
                     "feed": page["feed"], "cursor": int(page["next"])}
            if len(frame) or stored is None or state["feed"] != stored["feed"] or state["cursor"] != cursor:
                added += ledger.append_usage(frame, feed=state)
                stored, cursor = state, state["cursor"]
            if not page["has_more"] or not page["rows"]:
                break
            page = await node.usage_page(cursor, limit or DEFAULT_LIMIT)
    return {"url": node.base_url, "node_small_id": node_small_id, "rows_added": added, "pages": pages,
            "cursor": cursor}
