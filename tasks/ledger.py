"""Ledger tasks: index the chain's events and node usage; read the earnings."""

from __future__ import annotations

from prefect import task

from blocks import AtomaNetwork, Ledger, SuiWallet

from .labels import RunLabels
from .runtime import READ, ledger_for, open_chain


@task(name="sync-ledger", task_run_name=RunLabels("sync-ledger", network="network").name, **READ)
async def sync_ledger(network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None) -> dict:
    """Index new chain events and the nodes' served requests into the ledger (idempotent)."""
    book = ledger_for(network, ledger)
    async with open_chain(network, wallet) as chain:
        report = await book.sync(chain)
    usage_rows = book.import_node_usage(network.home)
    return {"events_applied": report.events_applied, "usage_rows": usage_rows, "ledger": str(book.path)}


@task(name="earnings-table", task_run_name=RunLabels("earnings-table", network="network").name, **READ)
def earnings_table(network: AtomaNetwork, ledger: Ledger | None, by: str = "node") -> list[dict]:
    """Earnings per node (or task, epoch) from the ledger, as table rows."""
    df = ledger_for(network, ledger).earnings(by)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]
