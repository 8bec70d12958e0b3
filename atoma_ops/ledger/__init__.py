"""The DuckDB ledger: raw events, the chain-state mirror, per-request usage, the intent journal, analyst views.

    from atoma_ops.ledger import Ledger
    ledger = Ledger("data/localnet/ledger.duckdb")
    await ledger.sync(chain)                 # index the chain's events (one DuckDB transaction per batch)
    ledger.earnings(by="node")               # pandas DataFrames: earnings, refunds, stacks, tickets, …
    ledger.append_usage(df)                  # per-request usage, one batch per call
    report = await ledger.reconcile(chain)   # drift between the mirror and the chain, row by row

Nothing here imports Prefect. See docs/ledger.md.
"""

import importlib
from typing import Any

# Loaded on first use: duckdb and pandas cost ~0.4 s to import, and `atoma-ops db …` must start fast.
_EXPORTS = {
    "EARNINGS_VIEWS": ".api",
    "Ledger": ".api",
    "default_path": ".api",
    "ChainMismatch": ".indexer",
    "Indexer": ".indexer",
    "SyncReport": ".indexer",
    "apply_batch": ".indexer",
    "ReconcileReport": ".reconcile",
    "LEDGER_FILE": ".store",
    "LedgerBusy": ".store",
    "LedgerError": ".store",
    "LedgerNotFound": ".store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
