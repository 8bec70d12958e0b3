"""Waiting out leases after a test or the crash harness kills a process: its reservations stay held until their
leases run out (nothing renews them any more), then any node service releases them; the signing slots it held
(``tasks/signer.py``: Prefect limits ``signer-<address>``) are freed by the Prefect server's repossessor, which a
test server may not run."""

from __future__ import annotations

import json
import time
import urllib.request
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


def free_signer_slots(api_url: str) -> int:
    """Free the signing slots a killed run held, as the Prefect server's repossessor does once their 60 s leases
    run out: a test server runs no such service (or runs it a minute too late for a test), and the next run of the
    address would wait for them. Talks to the API over HTTP (nothing here imports Prefect); returns how many limits
    it reset. ``reliability/signer_lease.py`` checks the lease and the repossessor themselves."""

    def call(method: str, path: str, body: dict) -> bytes:
        request = urllib.request.Request(f"{api_url.rstrip('/')}{path}", data=json.dumps(body).encode(),
                                         method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    freed = 0
    for limit in json.loads(call("POST", "/v2/concurrency_limits/filter", {"limit": 200})):
        if limit["name"].startswith("signer-") and limit["active_slots"]:
            call("PATCH", f"/v2/concurrency_limits/{limit['id']}", {"active_slots": 0})
            freed += 1
    return freed
