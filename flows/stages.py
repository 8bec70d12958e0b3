"""One flow per lifecycle stage. Each reads top to bottom like the stage it runs and leaves an artifact in the UI.

Every stage is safe to run again: chain writes go through the intent journal, serving skips the workload's lines
the stack already served or refused, and a stage whose effect is already on chain returns what is there.
"""

from __future__ import annotations

from prefect import flow
from prefect.logging import get_run_logger
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from atoma_ops import lifecycle
from atoma_ops.chain.errors import InvalidArgument
from atoma_ops.client.buyer import node_address
from atoma_ops.protocol.constants import SecurityLevel
from atoma_ops.serving.workload import load_workload
from blocks import AtomaNetwork, InferenceEngine, Ledger, SuiWallet
from tasks import chain as chain_tasks
from tasks import node as node_tasks
from tasks.labels import RunLabels, add_flow_run_tags, artifact_key, usdc, with_usdc
from tasks.runtime import FLOW_TIMEOUT_S, REPLAY_TIMEOUT_S, STEP_HOOKS, network_or_default

#: serving a whole stack, or replaying one, on a CPU engine takes hours for a big one
LONG_FLOW_TIMEOUT_S = 6 * 3600
#: the dispute window is one epoch: about a day on Sui (prefer the scheduled settlement-run there)
WAIT_FLOW_TIMEOUT_S = 26 * 3600

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


_MINT = RunLabels("mint-usdc", account="recipient")
_CREATE_TASK = RunLabels("create-task", account="admin")
_SUBSCRIBE = RunLabels("subscribe-node", task="task_small_id", node="node")
_BUY = RunLabels("buy-stack", task="task_small_id", account="buyer")
_SERVE = RunLabels("serve-stack", stack="stack_small_id", node="node")
_TRY_SETTLE = RunLabels("try-settle", stack="stack_small_ids", node="node")
_WAIT = RunLabels("wait-for-dispute-window", stack="stack_small_id", suffix="epoch-{claimable_from_epoch}")
_ATTEST = RunLabels("attest", stack="stack_small_id", node="node")
_CLAIM = RunLabels("claim", stack="stack_small_ids", node="node")


def _subject_key(network: AtomaNetwork, stack_small_ids: list[int] | None, node: str, what: str) -> str:
    """One stack's card, or the node's when the run covers several stacks (or all of them)."""
    if stack_small_ids is not None and len(stack_small_ids) == 1:
        return artifact_key(network, "stack", stack_small_ids[0], what)
    return artifact_key(network, "node", node, what)


@flow(name="mint-usdc", flow_run_name=_MINT.name, timeout_seconds=FLOW_TIMEOUT_S, **STEP_HOOKS)
@_MINT.tagged
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
    text = (
        f"{recipient} holds {usdc(report.balance_after)} (minted {usdc(report.minted)}; "
        f"wanted at least {usdc(amount)})"
    )
    get_run_logger().info(text)
    await acreate_markdown_artifact(
        text + ".", key=artifact_key(network, "account", recipient, "usdc"),
        description="USDC balance after the mint stage",
    )
    return report


@flow(name="create-task", flow_run_name=_CREATE_TASK.name, timeout_seconds=FLOW_TIMEOUT_S, **STEP_HOOKS)
@_CREATE_TASK.tagged
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
    await add_flow_run_tags([f"task:{task_small_id}"])
    get_run_logger().info(
        "task %d: %s, role %d, %s, %s; admin settings changed: %s", task_small_id, model_name, role, level_name,
        "public" if is_public else "private", changed or "none",
    )
    await acreate_markdown_artifact(
        f"Task **{task_small_id}**: `{model_name}`, role {role}, {level_name}, "
        f"{'public' if is_public else 'private'}." + (f"\n\nAdmin settings changed: `{changed}`" if changed else ""),
        key=artifact_key(network, "task", task_small_id),
        description="The task the stack is bought on",
    )
    return task_small_id


@flow(
    name="register-and-subscribe-node", flow_run_name=_SUBSCRIBE.name, timeout_seconds=FLOW_TIMEOUT_S, **STEP_HOOKS
)
@_SUBSCRIBE.tagged
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
    text = (
        f"Node **{node}** (small id {node_small_id}) asks **{usdc(price_per_one_million_compute_units)}** per 1M "
        f"compute units on task {task_small_id}."
    )
    get_run_logger().info(text.replace("**", ""))
    await acreate_markdown_artifact(
        text, key=artifact_key(network, "node", node, "task", task_small_id), description="Node subscription"
    )
    return node_small_id


@flow(name="buy-stack", flow_run_name=_BUY.name, timeout_seconds=FLOW_TIMEOUT_S, **STEP_HOOKS)
@_BUY.tagged
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
    await add_flow_run_tags([f"stack:{bought.stack_small_id}"])
    text = (
        f"Stack **{bought.stack_small_id}**: {num_compute_units} compute units at "
        f"{usdc(price_per_one_million_compute_units)} per 1M, sold to node **{bought.selected_node_id}** "
        f"(`{bought.digest}`)."
    )
    get_run_logger().info(text.replace("**", "").replace("`", ""))
    await acreate_markdown_artifact(
        text, key=artifact_key(network, "stack", bought.stack_small_id, "bought"), description="The stack bought"
    )
    return {"stack_small_id": bought.stack_small_id, "selected_node_id": bought.selected_node_id}


@flow(name="serve-stack", flow_run_name=_SERVE.name, timeout_seconds=LONG_FLOW_TIMEOUT_S, **STEP_HOOKS)
@_SERVE.tagged
async def serve_stack(
    stack_small_id: int,
    node: str,
    workload: str = "data/workloads/sample.jsonl",
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    engine: InferenceEngine | None = None,
    window: int | None = None,
    node_url: str | None = None,
    buyer: str | None = None,
) -> dict:
    """The buyer sends the workload to the stack's selected node, as a real user does: over HTTP, each request
    signed with the buyer's key (``buyer``, default the stack's owner), each answer's signature checked. The node
    is ``node_url`` when it already runs (``atoma-ops node serve``), else its HTTP server is started in the task on a
    free loopback port around ``engine``. One task per window of ``window`` requests (default 4 × the engine's
    concurrency, ``engine.batch_size``), each sending its window ``batch_size`` at once, with a progress bar in the
    UI. Re-runnable: lines served or refused before (same workload, same stack) are answered from the node's record.

    Returns the whole workload's counts: ``served`` / ``refused`` in all (``served_now`` / ``refused_now`` by this
    run, ``already_served`` / ``already_refused`` skipped), ``failed`` (not charged; served by a re-run)."""
    if window is not None and window < 1:
        raise InvalidArgument(f"window must be at least 1 request, not {window}")
    network = network_or_default(network)
    engine = engine or InferenceEngine()
    requests = load_workload(workload)  # WorkloadError: terminal, the run fails at once with the file and line
    if node_url is not None:  # InvalidNodeUrl, NodeUnreachable, NotANode: named here, not per request in the tasks
        await node_address(node_url)
    key = lifecycle.workload_id(requests)
    window = window or 4 * engine.batch_size
    get_run_logger().info(
        "stack %d on %s: %d requests (workload %s), windows of %d", stack_small_id, node, len(requests), key, window
    )
    progress = await acreate_progress_artifact(
        0.0, key=artifact_key(network, "stack", stack_small_id, "serving"), description="Requests served"
    )
    totals = dict(served_now=0, refused_now=0, already_served=0, already_refused=0, failed=0, units_charged=0)
    refused, failed, report = [], [], None
    for start in range(0, len(requests), window):
        stop = min(start + window, len(requests))
        report = await node_tasks.serve_batch(
            network, wallet, engine, node, stack_small_id, requests, start, stop, workload_id=key, node_url=node_url,
            buyer=buyer,
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
    get_run_logger().info(
        "stack %d: %d of %d requests served (%d now), %d refused, %d failed; %d units charged now, %d used, %d left",
        stack_small_id, summary["served"], len(requests), totals["served_now"], summary["refused"], totals["failed"],
        totals["units_charged"], summary["units_used"], summary["units_left"],
    )
    await acreate_table_artifact(
        [summary], key=artifact_key(network, "stack", stack_small_id, "served"),
        description="What serving charged: served / refused this run, skipped (served or refused by an earlier run), failed",
    )
    if refused:
        await acreate_table_artifact(
            refused, key=artifact_key(network, "stack", stack_small_id, "refused"),
            description="Requests refused this run (nothing charged, recorded: a re-run skips them)",
        )
    if failed:
        await acreate_table_artifact(
            failed, key=artifact_key(network, "stack", stack_small_id, "failed"),
            description="Requests that failed (nothing charged, not recorded: a re-run serves them)",
        )
    return summary


@flow(name="try-settle", flow_run_name=_TRY_SETTLE.name, timeout_seconds=FLOW_TIMEOUT_S, **STEP_HOOKS)
@_TRY_SETTLE.tagged
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
    log = get_run_logger()
    for r in rows:
        log.info(
            "stack %s: %s, %s units claimed, attesters requested %s (%s)", r.get("stack_small_id"), r.get("status"),
            r.get("claimed_units"), r.get("requested_attestation_nodes"), r.get("digest") or r.get("error"),
        )
    await acreate_table_artifact(
        rows, key=_subject_key(network, stack_small_ids, node, "try-settle"), description="Settlement tickets opened"
    )
    # skipped: not a stack this node serves (another node's, unknown) or one with requests in flight
    failed = [r for r in rows if r["status"] in ("failed", "skipped")]
    if failed:
        raise lifecycle.StageError(f"try-settle refused for {len(failed)} stack(s): {failed[0]['error']}")
    return rows


@flow(
    name="wait-for-dispute-window", flow_run_name=_WAIT.name, timeout_seconds=WAIT_FLOW_TIMEOUT_S, **STEP_HOOKS
)
@_WAIT.tagged
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
    waiting = chain_tasks.wait_for_epoch.with_options(timeout_seconds=timeout_s + 60)  # the poll gives up first
    epoch = await waiting(network, wallet, claimable_from_epoch, timeout_s)
    text = (
        f"Stack {stack_small_id}: epoch **{epoch}** reached; the ticket is claimable from epoch "
        f"{claimable_from_epoch}."
    )
    get_run_logger().info(text.replace("**", ""))
    await acreate_markdown_artifact(
        text, key=artifact_key(network, "stack", stack_small_id, "dispute-window"), description="Dispute window"
    )
    return epoch


@flow(
    name="attest", flow_run_name=_ATTEST.name, timeout_seconds=REPLAY_TIMEOUT_S + FLOW_TIMEOUT_S, **STEP_HOOKS
)
@_ATTEST.tagged
async def attest(
    stack_small_id: int,
    node: str,
    history_dir: str | None = None,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
    engine: InferenceEngine | None = None,
    history_url: str | None = None,
) -> dict:
    """A node the contract picked replays the stack's history and submits its own commitment. The history: read
    from the serving node's server at ``history_url`` (signed with this node's key), else an export in
    ``history_dir`` or the node stores under the network's home."""
    network = network_or_default(network)
    engine = engine or InferenceEngine()
    if history_url:
        history = await node_tasks.fetch_history(network, wallet, node, stack_small_id, [history_url])
    else:
        history = lifecycle.find_history(stack_small_id, home=network.home, history_dir=history_dir)
    replayed = await node_tasks.replay_stack(network, engine, stack_small_id, history.root.hex(), history_dir, history)
    attested = await node_tasks.attest_stack(network, wallet, ledger, node, stack_small_id, replayed)
    report = replayed["report"]
    verdict = "disputed" if attested.disputed else ("complete" if attested.completed else "recorded")
    text = (
        f"Node **{node}** replayed stack {stack_small_id} ({report.get('num_requests', len(replayed['leaves']))} "
        f"requests): replay {'matches' if report.get('equal') else 'DIFFERS from'} the served history. "
        f"Attestation at position {attested.position}: **{verdict}** (`{attested.digest}`)."
    )
    get_run_logger().info(text.replace("**", "").replace("`", ""))
    await acreate_markdown_artifact(
        text, key=artifact_key(network, "stack", stack_small_id, "attest", node), description="Attestation"
    )
    return {**lifecycle.as_rows([attested])[0], "replay": {k: report.get(k) for k in ("equal", "first_divergence")}}


@flow(name="claim", flow_run_name=_CLAIM.name, timeout_seconds=FLOW_TIMEOUT_S, **STEP_HOOKS)
@_CLAIM.tagged
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
        claimed += await node_tasks.claim_tickets(network, wallet, ledger, node, tickets, batch_size, plan.facts)
    if confidential:
        claimed += await node_tasks.claim_confidential(network, wallet, ledger, node, confidential, batch_size, plan.facts)
    rows = lifecycle.as_rows(claimed)
    log = get_run_logger()
    for r in rows:
        log.info(
            "stack %s: %s (%s), node fee %s, buyer refund %s (%s)", r.get("stack_small_id"), r.get("status"),
            r.get("path"), usdc(r.get("node_fee")), usdc(r.get("refund")), r.get("digest"),
        )
    for w in plan.waiting:
        log.info("stack %s: not claimable yet (%s)", w["stack_small_id"], w["why"])
    await acreate_table_artifact(
        with_usdc(rows, "node_fee", "refund") or [{"stack_small_id": None, "status": "nothing claimable"}],
        key=_subject_key(network, stack_small_ids, node, "claim"),
        description="Claims (money in USDC, base units beside)",
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
