"""``stack_lifecycle``: one stack's whole life, stage by stage, as the user of Atoma sees it."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.logging import get_run_logger

from atoma_ops import lifecycle
from atoma_ops.client.buyer import node_address
from atoma_ops.protocol.constants import SecurityLevel
from blocks import AtomaNetwork, InferenceEngine, Ledger, SuiWallet
from tasks import ledger as ledger_tasks
from tasks.labels import RunLabels, add_flow_run_tags, artifact_key, usdc, with_usdc
from tasks.runtime import network_or_default, open_chain

from .stages import (
    attest,
    buy_stack,
    claim,
    create_task,
    mint_usdc,
    register_and_subscribe_node,
    serve_stack,
    try_settle,
    security_level_of,
    wait_for_dispute_window,
)

_LIFECYCLE = RunLabels("stack-lifecycle", network="network", suffix="key-{key}")
#: every stage of one stack, the dispute window (one epoch) included
LIFECYCLE_TIMEOUT_S = 30 * 3600


@flow(name="stack-lifecycle", flow_run_name=_LIFECYCLE.name, timeout_seconds=LIFECYCLE_TIMEOUT_S)
@_LIFECYCLE.tagged
async def stack_lifecycle(
    key: str = "lifecycle",
    workload: str = "data/workloads/sample.jsonl",
    security_level: str | int = "sampling_consensus",
    model_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
    nodes: list[str] = ["node-1", "node-2", "node-3"],  # noqa: B006 - Prefect parameters are copied per run
    node_prices: list[int] = [800_000, 900_000, 1_000_000],  # noqa: B006
    bid_price: int = 1_000_000,
    num_compute_units: int = 100_000,
    mint_amount: int = 10_000_000,
    cross_validation_probability_permille: int | None = 1000,
    buyer: str = "user",
    admin: str = "admin",
    history_dir: str | None = None,
    wait_timeout_s: float = 900.0,
    wait_and_claim: bool = True,
    node_url: str | None = None,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
    engine: InferenceEngine | None = None,
) -> dict:
    """Mint, create a task, subscribe nodes, buy a stack, serve it, try-settle, attest, wait, claim.

    Args:
        key: names this lifecycle's one-off writes (the task, the stack): a re-run with the same key resumes it
            instead of buying another stack.
        workload: JSONL of chat requests served on the stack.
        security_level: of the task: ``no_security``, ``confidential_compute`` or ``sampling_consensus``.
        nodes, node_prices: the nodes to register and their asking prices (per one million compute units).
        buyer: who is minted USDC, buys the stack and signs its requests (alias or address of the wallet).
        bid_price, num_compute_units: the buyer's stack.
        cross_validation_probability_permille: the admin's attestation lottery (1000 = always attest).
        node_url: the serving node where it already runs (``atoma-ops node serve``, e.g. ``http://127.0.0.1:8000``):
            the workload is sent there over HTTP. It must be the node the contract sells the stack to (answers signed
            by another key are refused) and keep its store in this network's home, where try-settle, attest and claim
            read the history. Default: that node's HTTP server started in the serving task on a free loopback port
            around ``engine``.
        wait_and_claim: wait out the dispute window and claim. False stops after the attestations and leaves the
            claim to the scheduled ``settlement-run`` (on Sui an epoch lasts about a day: do not hold a worker).
    """
    network = network_or_default(network)
    engine = engine or InferenceEngine()
    # every parameter checked before the first write: a bad one must not leave USDC minted or a node registered
    if len(nodes) != len(node_prices):
        raise lifecycle.StageError(f"{len(nodes)} nodes but {len(node_prices)} prices")
    security_level_of(security_level)
    for price in node_prices:
        lifecycle.checked_args("subscribe_node_to_task", {"price_per_one_million_compute_units": price})
    lifecycle.checked_args("acquire_new_stack_entry", {"num_compute_units": num_compute_units, "price": bid_price})
    if cross_validation_probability_permille is not None:
        lifecycle.checked_args("set_cross_validation_probability_permille", {"value": cross_validation_probability_permille})
    if node_url is not None:  # a node that is not there (InvalidNodeUrl, NodeUnreachable, NotANode) buys nothing
        await node_address(node_url)

    await mint_usdc(buyer, mint_amount, key, network=network, wallet=wallet, ledger=ledger)

    task_small_id = await create_task(
        key, model_name, security_level,
        cross_validation_probability_permille=cross_validation_probability_permille,
        admin=admin, network=network, wallet=wallet, ledger=ledger,
    )

    for node, price in zip(nodes, node_prices):
        await register_and_subscribe_node(node, task_small_id, price, network=network, wallet=wallet, ledger=ledger)

    bought = await buy_stack(
        task_small_id, num_compute_units, bid_price, key=key, buyer=buyer, network=network, wallet=wallet, ledger=ledger
    )
    stack_small_id = bought["stack_small_id"]
    serving_node = await _node_alias(network, wallet, bought["selected_node_id"], nodes)
    await add_flow_run_tags([f"task:{task_small_id}", f"stack:{stack_small_id}", f"node:{serving_node}"])
    log = get_run_logger()
    log.info("task %d, stack %d: sold to %s", task_small_id, stack_small_id, serving_node)

    served = await serve_stack(
        stack_small_id, serving_node, workload, network=network, wallet=wallet, engine=engine, node_url=node_url,
        buyer=buyer,
    )

    settled, attestations = None, []
    if security_level_of(security_level) != SecurityLevel.CONFIDENTIAL_COMPUTE:  # confidential: claimed directly
        (settled,) = await try_settle([stack_small_id], serving_node, network=network, wallet=wallet, ledger=ledger)

        for attester in await _attesters(network, wallet, settled["requested_attestation_nodes"], nodes):
            attestations.append(
                await attest(stack_small_id, attester, history_dir, network=network, wallet=wallet, ledger=ledger, engine=engine)
            )

        if wait_and_claim:
            claimable_from = settled.get("dispute_settled_at_epoch") or await _claimable_from(network, wallet, stack_small_id)
            if claimable_from is not None:
                await wait_for_dispute_window(stack_small_id, claimable_from, wait_timeout_s, network=network, wallet=wallet)

    claims = []
    if wait_and_claim or settled is None:  # confidential stacks need no window: claimed at once
        claims = await claim(serving_node, [stack_small_id], network=network, wallet=wallet, ledger=ledger)

    await ledger_tasks.sync_ledger(network, wallet, ledger)
    earnings = ledger_tasks.earnings_table(network, ledger)
    await acreate_table_artifact(
        with_usdc(earnings, "node_fees", "attester_credits", "total"), key=artifact_key(network, "earnings"),
        description="Earnings per node (USDC, base units beside), from the ledger",
    )
    summary = {
        "task_small_id": task_small_id,
        "stack_small_id": stack_small_id,
        "serving_node": serving_node,
        "served": served,
        "settled": settled,
        "attestations": attestations,
        "claims": claims,
        "claim_deferred": not wait_and_claim and settled is not None,
        "earnings": earnings,
    }
    log.info(summary_markdown(summary).replace("**", "").replace("`", ""))
    await acreate_markdown_artifact(
        summary_markdown(summary), key=artifact_key(network, "stack", stack_small_id, "lifecycle"),
        description="The stack's life",
    )
    return summary


async def _node_alias(network: AtomaNetwork, wallet: SuiWallet | None, node_small_id: int, nodes: list[str]) -> str:
    async with open_chain(network, wallet) as chain:
        return await lifecycle.alias_of_node(chain, node_small_id, nodes)


async def _attesters(network: AtomaNetwork, wallet: SuiWallet | None, requested: list[int], nodes: list[str]) -> list[str]:
    """The wallet's nodes among the requested attestation nodes, each once (a node drawn twice attests once per
    draw in the contract's count, but replays once)."""
    async with open_chain(network, wallet) as chain:
        return [await lifecycle.alias_of_node(chain, n, nodes) for n in dict.fromkeys(requested)]


async def _claimable_from(network: AtomaNetwork, wallet: SuiWallet | None, stack_small_id: int) -> int | None:
    async with open_chain(network, wallet) as chain:
        ticket = await chain.get_ticket(stack_small_id)
    return ticket.dispute_settled_at_epoch if ticket else None


def summary_markdown(s: dict) -> str:
    """The lifecycle's summary as markdown (the run's artifact; the demo prints it too)."""
    lines = [
        f"# Stack {s['stack_small_id']} (task {s['task_small_id']})",
        f"- served by **{s['serving_node']}**: {s['served']['served']} requests, {s['served']['units_used']} compute units",
    ]
    if s["settled"]:
        lines.append(
            f"- settled: {s['settled']['claimed_units']} units claimed, attesters requested "
            f"{s['settled']['requested_attestation_nodes']}"
        )
    for a in s["attestations"]:
        verdict = "disputed" if a["disputed"] else "agreed"
        lines.append(f"- attestation at position {a['position']}: {verdict} (replay equal: {a['replay'].get('equal')})")
    for c in s["claims"]:
        lines.append(f"- claimed: node fee {usdc(c['node_fee'])}, buyer refund {usdc(c['refund'])} (`{c['digest']}`)")
    if s.get("claim_deferred"):
        lines.append("- claim left to the scheduled settlement-run (once the dispute window has passed)")
    return "\n".join(lines)
