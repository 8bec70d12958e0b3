"""``ledger_sync``: keep the analysts' DuckDB ledger up to date with the chain and the nodes' usage."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.logging import get_run_logger

from blocks import AtomaNetwork, Ledger, SuiWallet
from tasks import ledger as ledger_tasks
from tasks.labels import RunLabels, artifact_key
from tasks.runtime import FLOW_TIMEOUT_S, network_or_default

_SYNC = RunLabels("ledger-sync", network="network")


@flow(name="ledger-sync", flow_run_name=_SYNC.name, timeout_seconds=FLOW_TIMEOUT_S)
@_SYNC.tagged
async def ledger_sync(
    network: AtomaNetwork | None = None, wallet: SuiWallet | None = None, ledger: Ledger | None = None,
    node_urls: list[str] | None = None,
) -> dict:
    """Index new chain events and served requests into the ledger (idempotent; the cursor commits with the rows).
    ``node_urls``: read the nodes' usage over HTTP from these node servers (``atoma-ops node serve``) instead of the
    node stores under the network's home (a ledger on another host than the nodes)."""
    network = network_or_default(network)
    report = await ledger_tasks.sync_ledger(network, wallet, ledger, node_urls)
    text = f"Ledger `{report['ledger']}`: {report['events_applied']} new events, {report['usage_rows']} new usage rows."
    get_run_logger().info(text.replace("`", ""))
    await acreate_markdown_artifact(
        text,
        key=artifact_key(network, "ledger-sync"),
        description="Ledger sync",
    )
    return report
