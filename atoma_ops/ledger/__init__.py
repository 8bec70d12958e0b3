"""The DuckDB ledger: raw events, the chain-state mirror, per-request usage, the intent journal, analyst views.

    from atoma_ops.ledger import Ledger
    ledger = Ledger("data/localnet/ledger.duckdb")
    await ledger.sync(chain)                 # index the chain's events (one DuckDB transaction per batch)
    ledger.earnings(by="node")               # pandas DataFrames: earnings, refunds, stacks, tickets, …
    ledger.append_usage(df)                  # per-request usage, one batch per call
    report = await ledger.reconcile(chain)   # drift between the mirror and the chain, row by row

Nothing here imports Prefect. See docs/ledger.md.
"""

from .api import EARNINGS_VIEWS, Ledger, default_path
from .indexer import ChainMismatch, Indexer, SyncReport, apply_batch
from .reconcile import ReconcileReport
from .store import LEDGER_FILE, LedgerBusy, LedgerError, LedgerNotFound

__all__ = [
    "EARNINGS_VIEWS",
    "ChainMismatch",
    "Indexer",
    "LEDGER_FILE",
    "Ledger",
    "LedgerBusy",
    "LedgerError",
    "LedgerNotFound",
    "ReconcileReport",
    "SyncReport",
    "apply_batch",
    "default_path",
]
