"""One flow per lifecycle stage. Each reads top to bottom like the stage it runs and leaves an artifact in the UI.

Every stage is safe to run again: chain writes go through the intent journal, serving skips the workload's lines
the stack already served or refused, and a stage whose effect is already on chain returns what is there.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from atoma_ops import lifecycle
from atoma_ops.chain.errors import InvalidArgument
from atoma_ops.protocol.constants import SecurityLevel
from atoma_ops.serving.workload import load_workload
from blocks import AtomaNetwork, InferenceEngine, Ledger, SuiWallet
from tasks import chain as chain_tasks
from tasks import node as node_tasks
from tasks.runtime import STEP_HOOKS, network_or_default

SECURITY_LEVELS = {"no_security": 0, "confidential_compute": 1, "sampling_consensus": 2}


def security_level_of(value: str | int | None) -> int | None:
    """A security level by name (``no_security``, ``confidential_compute``, ``sampling_consensus``) or number."""
    if value is None or isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    try:
        return SECURITY_LEVELS[value.lower().replace("-", "_")]
    except KeyError:
        raise lifecycle.StageError(f"unknown security level {value!r} (one of {', '.join(SECURITY_LEVELS)})") from None


@flow(name="mint-usdc", **STEP_HOOKS)
async def mint_usdc(
    recipient: str = "user",
    amount: int = 10_000_000,
    key: str | None = None,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
) -> lifecycle.MintReport:
    """Top the recipient up to ``amount`` USDC base units (1 USDC = 1,000,000); with a ``key``, once per key."""
    network = network_or_default(network)
    report = await chain_tasks.mint_usdc(network, wallet, ledger, recipient, amount, key)
    await acreate_markdown_artifact(
        f"**{recipient}** holds **{report.balance_after / 1e6:.6f} USDC** (minted {report.minted / 1e6:.6f}; "
        f"wanted at least {amount / 1e6:.6f}).",
        key="mint-usdc",
        description="USDC balance after the mint stage",
    )
    return report


@flow(name="create-task", **STEP_HOOKS)
async def create_task(
    key: str = "default",
    model_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
    security_level: str | int | None = "sampling_consensus",
    role: int = 0,
    minimum_reputation_score: int | None = None,
    is_public: bool = True,
    cross_validation_probability_permille: int | None = None,
    cross_validation_extra_nodes_count: int | None = None,
    admin: str = "admin",
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
) -> int:
    """The admin creates a task (once per ``key``) and, if asked, sets the Sampling Consensus lottery."""
    network = network_or_default(network)
    level = security_level_of(security_level)
    task_small_id = await chain_tasks.create_task(
        network, wallet, ledger, admin, key,
        role=role, model_name=model_name, security_level=level,
        minimum_reputation_score=minimum_reputation_score, is_public=is_public,
    )
    changed = {}
    if cross_validation_probability_permille is not None or cross_validation_extra_nodes_count is not None:
        changed = await chain_tasks.set_cross_validation(
            network, wallet, ledger, admin, cross_validation_probability_permille, cross_validation_extra_nodes_count
        )
    level_name = SecurityLevel(level).name.lower() if level is not None else "no_security"
    await acreate_markdown_artifact(
        f"Task **{task_small_id}**: `{model_name}`, role {role}, {level_name}, "
        f"{'public' if is_public else 'private'}." + (f"\n\nAdmin settings changed: `{changed}`" if changed else ""),
        key="create-task",
        description="The task the stack is bought on",
    )
    return task_small_id


@flow(name="register-and-subscribe-node", **STEP_HOOKS)
async def register_and_subscribe_node(
    node: str,
    task_small_id: int,
    price_per_one_million_compute_units: int,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
) -> int:
    """Register the node (if it has no NodeBadge yet) and subscribe it to the task at its asking price."""
    network = network_or_default(network)
    lifecycle.checked_args(  # a bad price must not leave a new node registered
        "subscribe_node_to_task",
        {"task_small_id": task_small_id, "price_per_one_million_compute_units": price_per_one_million_compute_units},
    )
    await chain_tasks.register_node(network, wallet, ledger, node)
    node_small_id = await chain_tasks.subscribe_node(network, wallet, ledger, node, task_small_id, price_per_one_million_compute_units)
    await acreate_markdown_artifact(
        f"Node **{node}** (small id {node_small_id}) asks **{price_per_one_million_compute_units}** base units per "
        f"1M compute units on task {task_small_id}.",
        key=f"node-{node_small_id}-subscription",
        description="Node subscription",
    )
    return node_small_id


@flow(name="buy-stack", **STEP_HOOKS)
async def buy_stack(
    task_small_id: int,
    num_compute_units: int,
    price_per_one_million_compute_units: int,
    key: str = "default",
    buyer: str = "user",
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
) -> dict:
    """The buyer buys a stack of compute units at a bid price (once per ``key``); the contract picks the node."""
    network = network_or_default(network)
    bought = await chain_tasks.buy_stack(
        network, wallet, ledger, buyer, key, task_small_id, num_compute_units, price_per_one_million_compute_units
    )
    await acreate_markdown_artifact(
        f"Stack **{bought.stack_small_id}**: {num_compute_units} compute units at {price_per_one_million_compute_units} "
        f"per 1M, sold to node **{bought.selected_node_id}** (`{bought.digest}`).",
        key="buy-stack",
        description="The stack bought",
    )
    return {"stack_small_id": bought.stack_small_id, "selected_node_id": bought.selected_node_id}


@flow(name="serve-stack", **STEP_HOOKS)
async def serve_stack(
    stack_small_id: int,
    node: str,
    workload: str = "data/workloads/sample.jsonl",
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    engine: InferenceEngine | None = None,
    window: int | None = None,
) -> dict:
    """The selected node serves the workload on the stack: one task per window of ``window`` requests (default
    4 × the engine's concurrency, ``engine.batch_size``), each serving its window ``batch_size`` at once, with a
    progress bar in the UI. Re-runnable: lines served or refused before (same workload, same stack) are skipped.

    Returns the whole workload's counts: ``served`` / ``refused`` in all (``served_now`` / ``refused_now`` by this
    run, ``already_served`` / ``already_refused`` skipped), ``failed`` (not charged; served by a re-run)."""
    if window is not None and window < 1:
        raise InvalidArgument(f"window must be at least 1 request, not {window}")
    network = network_or_default(network)
    engine = engine or InferenceEngine()
    requests = load_workload(workload)
    key = lifecycle.workload_id(requests)
    window = window or 4 * engine.batch_size
    progress = await acreate_progress_artifact(0.0, key=f"serve-stack-{stack_small_id}", description="Requests served")
    totals = dict(served_now=0, refused_now=0, already_served=0, already_refused=0, failed=0, units_charged=0)
    refused, failed, report = [], [], None
    for start in range(0, len(requests), window):
        stop = min(start + window, len(requests))
        report = await node_tasks.serve_batch(
            network, wallet, engine, node, stack_small_id, requests, start, stop, workload_id=key
        )
        totals["served_now"] += report.served
        totals["refused_now"] += len(report.refused)
        totals["already_served"] += report.already_served
        totals["already_refused"] += report.already_refused
        totals["failed"] += len(report.failed)
        totals["units_charged"] += report.units_charged
        refused += report.refused
        failed += report.failed
        await aupdate_progress_artifact(progress, 100.0 * stop / len(requests))
    summary = {
        "stack_small_id": stack_small_id,
        "workload_id": key,
        "requests": len(requests),
        "served": totals["served_now"] + totals["already_served"],
        "refused": totals["refused_now"] + totals["already_refused"],
        **totals,
        "units_used": report.units_used if report else 0,
        "units_left": report.units_left if report else 0,
    }
    await acreate_table_artifact(
        [summary], key="serve-stack",
        description="What serving charged: served / refused this run, skipped (served or refused by an earlier run), failed",
    )
    if refused:
        await acreate_table_artifact(refused, key="serve-stack-refused", description="Requests refused this run (nothing charged, recorded: a re-run skips them)")
    if failed:
        await acreate_table_artifact(failed, key="serve-stack-failed", description="Requests that failed (nothing charged, not recorded: a re-run serves them)")
    return summary


@flow(name="try-settle", **STEP_HOOKS)
async def try_settle(
    stack_small_ids: list[int],
    node: str,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
) -> list[dict]:
    """The node commits to each stack's history (Merkle root) and claims the units it served."""
    network = network_or_default(network)
    settled = await node_tasks.try_settle_stacks(network, wallet, ledger, node, stack_small_ids)
    rows = lifecycle.as_rows(settled)
    await acreate_table_artifact(rows, key="try-settle", description="Settlement tickets opened")
    # skipped: not a stack this node serves (another node's, unknown) or one with requests in flight
    failed = [r for r in rows if r["status"] in ("failed", "skipped")]
    if failed:
        raise lifecycle.StageError(f"try-settle refused for {len(failed)} stack(s): {failed[0]['error']}")
    return rows


@flow(name="wait-for-dispute-window", **STEP_HOOKS)
async def wait_for_dispute_window(
    stack_small_id: int,
    claimable_from_epoch: int,
    timeout_s: float = 900.0,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
) -> int:
    """Wait until the ticket's dispute window has passed (epoch E + 1). On Sui an epoch lasts about a day: leave
    claims to the scheduled settlement run there instead of holding a worker."""
    network = network_or_default(network)
    epoch = await chain_tasks.wait_for_epoch(network, wallet, claimable_from_epoch, timeout_s)
    await acreate_markdown_artifact(
        f"Stack {stack_small_id}: epoch **{epoch}** reached; the ticket is claimable from epoch {claimable_from_epoch}.",
        key="wait-for-dispute-window",
        description="Dispute window",
    )
    return epoch


@flow(name="attest", **STEP_HOOKS)
async def attest(
    stack_small_id: int,
    node: str,
    history_dir: str | None = None,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
    engine: InferenceEngine | None = None,
) -> dict:
    """A node the contract picked replays the stack's history and submits its own commitment."""
    network = network_or_default(network)
    engine = engine or InferenceEngine()
    history = lifecycle.find_history(stack_small_id, home=network.home, history_dir=history_dir)
    replayed = await node_tasks.replay_stack(network, engine, stack_small_id, history.root.hex(), history_dir)
    attested = await node_tasks.attest_stack(network, wallet, ledger, node, stack_small_id, replayed)
    report = replayed["report"]
    verdict = "disputed" if attested.disputed else ("complete" if attested.completed else "recorded")
    await acreate_markdown_artifact(
        f"Node **{node}** replayed stack {stack_small_id} ({report.get('num_requests', len(replayed['leaves']))} "
        f"requests): replay {'matches' if report.get('equal') else 'DIFFERS from'} the served history. "
        f"Attestation at position {attested.position}: **{verdict}** (`{attested.digest}`).",
        key=f"attest-{stack_small_id}",
        description="Attestation",
    )
    return {**lifecycle.as_rows([attested])[0], "replay": {k: report.get(k) for k in ("equal", "first_divergence")}}


@flow(name="claim", **STEP_HOOKS)
async def claim(
    node: str,
    stack_small_ids: list[int] | None = None,
    batch_size: int = 100,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
) -> list[dict]:
    """The node claims its fee for settled tickets past their window (the buyer is refunded the rest), and for its
    ConfidentialCompute stacks. ``stack_small_ids`` limits the claim to those stacks."""
    network = network_or_default(network)
    plan = await node_tasks.plan_claims(network, wallet, ledger, node)
    claimed = [c for c in plan.recovered if stack_small_ids is None or c.stack_small_id in stack_small_ids]
    tickets = [s for s in plan.tickets if stack_small_ids is None or s in stack_small_ids]
    confidential = [c for c in plan.confidential if stack_small_ids is None or c[0] in stack_small_ids]
    if tickets:
        claimed += await node_tasks.claim_tickets(network, wallet, ledger, node, tickets, batch_size)
    if confidential:
        claimed += await node_tasks.claim_confidential(network, wallet, ledger, node, confidential, batch_size)
    rows = lifecycle.as_rows(claimed)
    await acreate_table_artifact(
        rows or [{"stack_small_id": None, "status": "nothing claimable"}], key="claim", description="Claims"
    )
    if stack_small_ids is not None:  # stacks asked for and not claimed, now or before (a re-run), are an error
        missing = sorted(set(stack_small_ids) - {r["stack_small_id"] for r in rows} - set(plan.claimed))
        waiting = {w["stack_small_id"]: w["why"] for w in plan.waiting}
        if any(m in waiting for m in missing):
            raise lifecycle.StageError(f"not claimable yet: {[(m, waiting[m]) for m in missing if m in waiting]}")
        if missing:
            raise lifecycle.StageError(
                f"{node} cannot claim stack(s) {missing}: not stacks it served and settled "
                "(another node's, unknown, or not try-settled yet)"
            )
    return rows
