"""``ledger_sync``: keep the analysts' DuckDB ledger up to date with the chain and the nodes' usage."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact

from blocks import AtomaNetwork, Ledger, SuiWallet
from tasks import ledger as ledger_tasks
from tasks.runtime import network_or_default


@flow(name="ledger-sync")
async def ledger_sync(network: AtomaNetwork | None = None, wallet: SuiWallet | None = None, ledger: Ledger | None = None) -> dict:
    """Index new chain events and served requests into the ledger (idempotent; the cursor commits with the rows)."""
    network = network_or_default(network)
    report = await ledger_tasks.sync_ledger(network, wallet, ledger)
    await acreate_markdown_artifact(
        f"Ledger `{report['ledger']}`: {report['events_applied']} new events, {report['usage_rows']} new usage rows.",
        key="ledger-sync",
        description="Ledger sync",
    )
    return report
