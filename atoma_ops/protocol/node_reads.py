"""The bytes a reader signs to read a node's data over HTTP (served usage, a stack's history). Pure: no I/O.

A read is a ``GET``: it has no body for the buyer's scheme (``X-Signature`` over blake2b-256 of the compact body)
to sign, so the reader signs a *description of the request* instead, with the same Sui signature over the same
blake2b-256 of compact JSON (``node_http.compact_json``)::

    {"method": "GET", "path": "/v1/node/usage", "query": {"after": "0", "limit": "500"},
     "node": "0x<the node's address>", "timestamp_ms": 1764912000000}

- ``query``: every query parameter as given (strings), sorted by name; a parameter given twice is refused;
- ``node``: the address of the node being read (``GET /health`` says it), so a signature made for one node is
  worthless at another;
- ``timestamp_ms``: when the reader signed, sent in ``X-Timestamp-Ms``; the node refuses one more than
  :data:`MAX_SKEW_MS` away from its own clock, so a captured signature cannot be replayed after that window.

Why a signed description of a ``GET`` rather than a ``POST`` with a signed body: the reads are reads (no state
changes, any number of retries, proxies and logs treat them as such), the page cursor sits in the URL like any
paged API's, and both sides reuse the buyer's signing code unchanged.
"""

from __future__ import annotations

from typing import Mapping

from .node_http import blake2b256, compact_json

#: when the reader signed (ms since the Unix epoch); part of the signed description
TIMESTAMP_HEADER = "X-Timestamp-Ms"
#: how far a signed read's timestamp may be from the node's clock, either way (5 minutes)
MAX_SKEW_MS = 5 * 60 * 1000

#: the node's served usage, one row per served request, paged by ``after`` (a cursor) and ``limit``
USAGE_PATH = "/v1/node/usage"
#: a stack's history export (``atoma-ops stack history --export``'s JSONL), streamed
HISTORY_PATH = "/v1/stacks/{stack_small_id}/history"
#: rows per usage page when the reader names no ``limit``, and the most it may ask for
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
#: the content type of a streamed history
JSONL_MEDIA_TYPE = "application/x-ndjson"


def read_document(method: str, path: str, query: Mapping[str, str], node: str, timestamp_ms: int) -> dict:
    """The description of a read that its reader signs (module doc)."""
    return {
        "method": method.upper(),
        "path": path,
        "query": {k: str(query[k]) for k in sorted(query)},
        "node": node,
        "timestamp_ms": int(timestamp_ms),
    }


def read_hash(method: str, path: str, query: Mapping[str, str], node: str, timestamp_ms: int) -> bytes:
    """The 32 bytes a reader signs: blake2b-256 of the compact JSON of :func:`read_document`."""
    return blake2b256(compact_json(read_document(method, path, query, node, timestamp_ms)))
