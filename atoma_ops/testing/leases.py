"""Waiting out reservation leases: after a test or the crash harness kills a serving process, its reservations stay
held until their leases run out (nothing renews them any more); then any node service releases them."""

from __future__ import annotations

import time
from pathlib import Path

from ..home import node_store_paths
from ..serving.store import NodeStore


def wait_out_leases(home: str | Path) -> float:
    """Sleep until every reservation lease in the node stores under ``home`` (``nodes/*/serving.sqlite``) has run
    out; returns the seconds waited (0 when nothing was reserved)."""
    latest = None
    for path in node_store_paths(home):
        with NodeStore(path) as store:
            expiry = store.lease_expiry_ms()
        if expiry is not None and (latest is None or expiry > latest):
            latest = expiry
    if latest is None:
        return 0.0
    wait = max(0.0, latest / 1000 - time.time()) + 0.05
    time.sleep(wait)
    return wait
