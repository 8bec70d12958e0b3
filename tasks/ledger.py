"""Ledger tasks: index the chain's events and node usage; read the earnings."""

from __future__ import annotations

from prefect import task

from atoma_ops.client.buyer import node_address
from atoma_ops.ledger.node_usage import import_node_usage_http
from blocks import AtomaNetwork, Ledger, SuiWallet

from .labels import RunLabels
from .runtime import READ, ledger_for, open_chain


@task(name="sync-ledger", task_run_name=RunLabels("sync-ledger", network="network").name, **READ)
async def sync_ledger(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, node_urls: list[str] | None = None
) -> dict:
    """Index new chain events and the nodes' served requests into the ledger (idempotent): the node stores under
    the network's home, or, with ``node_urls``, each node's ``GET /v1/node/usage`` instead (signed with the
    node's key from the wallet; resumed from the cursor the ledger keeps per node)."""
    book = ledger_for(network, ledger)
    for url in node_urls or []:  # a node that is not there (NodeUnreachable, NotANode) fails the run before it writes
        await node_address(url)
    async with open_chain(network, wallet) as chain:
        report = await book.sync(chain)
        if node_urls:
            imports = [await import_node_usage_http(book, url, wallet=chain.wallet) for url in node_urls]
            usage_rows = sum(i["rows_added"] for i in imports)
        else:
            imports, usage_rows = [], book.import_node_usage(network.home)
    return {"events_applied": report.events_applied, "usage_rows": usage_rows, "ledger": str(book.path),
            "node_imports": imports}


@task(name="earnings-table", task_run_name=RunLabels("earnings-table", network="network").name, **READ)
def earnings_table(network: AtomaNetwork, ledger: Ledger | None, by: str = "node") -> list[dict]:
    """Earnings per node (or task, epoch) from the ledger, as table rows."""
    df = ledger_for(network, ledger).earnings(by)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]
