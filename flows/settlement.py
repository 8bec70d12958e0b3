"""``settlement_run``: the ops team's scheduled run that turns served stacks into paid ones."""

from __future__ import annotations


from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.logging import get_run_logger

from atoma_ops import lifecycle
from atoma_ops.chain.errors import MoveAbort
from blocks import AtomaNetwork, Ledger, SuiWallet
from tasks import node as node_tasks
from tasks import watch
from tasks.events import emit
from tasks.labels import RunLabels, artifact_key, usdc, with_usdc
from tasks.results import ActionLog
from tasks.runtime import FLOW_TIMEOUT_S, network_or_default, open_chain

_RUN = RunLabels("settlement-run", network="network", node="nodes")


@flow(name="settlement-run", flow_run_name=_RUN.name, timeout_seconds=FLOW_TIMEOUT_S)
@_RUN.tagged
async def settlement_run(
    nodes: list[str] | None = None,
    idle_after_s: float = 3600.0,
    exhausted_below_units: int = 1,
    settle_batch_size: int = 1000,
    claim_batch_size: int = 100,
    min_value: int | None = None,
    network: AtomaNetwork | None = None,
    wallet: SuiWallet | None = None,
    ledger: Ledger | None = None,
) -> ActionLog:
    """For each of the wallet's nodes: try-settle every stack that is exhausted or idle past ``idle_after_s``, then
    claim every ticket whose dispute window has passed (batched ``claim_funds``). ConfidentialCompute stacks that
    are exhausted or idle are claimed directly (``claim_funds_for_stacks``, no ticket). Leaves a table of what it
    did.

    Args:
        nodes: aliases or addresses of the nodes to run for (default: every key of the wallet holding a NodeBadge).
        exhausted_below_units: a stack with fewer units left than this counts as exhausted.
        settle_batch_size: stacks per try-settle task (one journal write per batch).
        claim_batch_size: tickets per ``claim_funds`` transaction.
        min_value: skip settles and claims that pay the node less than this (USDC base units): gas would cost more
            than they earn (default: the Prefect Variable ``atoma_ops_min_settle_value``, else 0 on the localnet
            and ``tasks.watch.SUI_MIN_SETTLE_VALUE`` on Sui). What is skipped is in the run's table.
    """
    network = network_or_default(network)
    if min_value is None:
        min_value = await watch.threshold("atoma_ops_min_settle_value", network)
    await _report_in_doubt(network, ledger)
    log = get_run_logger()
    actions: list[dict] = []
    for node in nodes if nodes is not None else await _wallet_nodes(network, wallet):
        before = len(actions)
        candidates = await node_tasks.settle_candidates(network, wallet, node, idle_after_s, exhausted_below_units)
        candidates["tickets"], skipped = await _worth_it(
            network, wallet, candidates["tickets"], lambda c: (c.stack_small_id, c.used_units), min_value
        )
        actions += [_skipped(node, "try_settle", sid, value, min_value) for sid, value in skipped]
        ids = [c.stack_small_id for c in candidates["tickets"]]
        for start in range(0, len(ids), settle_batch_size):
            settled = await node_tasks.try_settle_stacks(network, wallet, ledger, node, ids[start:start + settle_batch_size])
            actions += [
                {"node": node, "action": "try_settle", "stack_small_id": s.stack_small_id, "units": s.claimed_units,
                 "node_fee": None, "refund": None, "status": s.status, "digest": s.digest, "note": s.error}
                for s in settled
            ]

        plan = await node_tasks.plan_claims(network, wallet, ledger, node)
        claimed = list(plan.recovered)
        for sid in plan.tickets:
            emit("atoma.ticket.claimable", network, kind="stack", id=sid, name=f"stack {sid}", node=node,
                 payload={"stack_small_id": sid, "node": node})
        tickets, skipped = await _worth_it(network, wallet, plan.tickets, lambda s: (s, None), min_value)
        actions += [_skipped(node, "claim", sid, value, min_value) for sid, value in skipped]
        confidential, skipped = await _worth_it(
            network, wallet, [(c.stack_small_id, c.used_units) for c in candidates["confidential"]], tuple, min_value
        )
        actions += [_skipped(node, "claim (confidential)", sid, value, min_value) for sid, value in skipped]
        for claim, items in ((node_tasks.claim_tickets, tickets), (node_tasks.claim_confidential, confidential)):
            if not items:
                continue
            try:
                claimed += await claim(network, wallet, ledger, node, items, claim_batch_size, plan.facts)
            except Exception as exc:  # noqa: BLE001 - told to the operator, in the table, and the run fails below
                _report_refused_claim(network, node, items, exc)
                actions.append({"node": node, "action": "claim", "stack_small_id": None, "units": None,
                                "node_fee": None, "refund": None, "status": "failed", "digest": None,
                                "note": f"{type(exc).__name__}: {exc}"})
        actions += [
            {"node": node, "action": f"claim ({c.path})", "stack_small_id": c.stack_small_id, "units": c.units,
             "node_fee": c.node_fee, "refund": c.refund, "status": c.status, "digest": c.digest, "note": None}
            for c in claimed
        ]
        actions += [
            {"node": node, "action": "wait", "stack_small_id": w["stack_small_id"], "units": None, "node_fee": None,
             "refund": None, "status": "waiting", "digest": None, "note": w["why"]}
            for w in plan.waiting
        ]
        _log_node(log, node, actions[before:])

    await acreate_table_artifact(
        with_usdc(actions, "node_fee", "refund") or [{"action": "nothing to do"}],
        key=artifact_key(network, "settlement-run"),
        description="What this settlement run did (money in USDC, base units beside)",
    )
    failed = [a for a in actions if a["status"] == "failed"]
    if failed:
        raise lifecycle.StageError(f"{len(failed)} stack(s) could not be settled; first: {failed[0]}")
    return ActionLog(actions)


async def _report_in_doubt(network: AtomaNetwork, ledger: Ledger | None) -> None:
    """Tell the operator about chain writes a crash left in doubt (this run resolves them by digest), one event per
    sending address."""
    by_sender: dict[str, list[dict]] = {}
    for row in await watch.intents_in_doubt(network, ledger):
        by_sender.setdefault(row["sender"], []).append(row)
    for sender, rows in by_sender.items():
        emit("atoma.settlement.in-doubt", network, kind="address", id=sender, name=sender,
             payload={"sender": sender, "count": len(rows), "intents": [r["key"] for r in rows[:20]],
                      "digests": [r["digest"] for r in rows[:20]]})


async def _worth_it(network: AtomaNetwork, wallet: SuiWallet | None, items: list, item_of, min_value: int) -> tuple[list, list[tuple[int, int]]]:
    """``items`` split into those paying the node at least ``min_value`` and the skipped ``(stack, value)``;
    ``item_of(item)`` is ``(stack, units)`` (units None: the ticket's). Nothing is read when the minimum is 0."""
    if min_value <= 0 or not items:
        return items, []
    values = await watch.stack_values(network, wallet, [item_of(i) for i in items])
    keep = [i for i in items if values[item_of(i)[0]] >= min_value]
    return keep, [(item_of(i)[0], values[item_of(i)[0]]) for i in items if values[item_of(i)[0]] < min_value]


def _skipped(node: str, action: str, stack_small_id: int, value: int, min_value: int) -> dict:
    return {"node": node, "action": action, "stack_small_id": stack_small_id, "units": None, "node_fee": value,
            "refund": None, "status": "skipped",
            "note": f"pays {value} USDC base units, less than the minimum {min_value} (gas would cost more)"}


def _report_refused_claim(network: AtomaNetwork, node: str, items: list, exc: BaseException) -> None:
    """``atoma.claim.refused`` for each stack of a refused claim; ``atoma.treasury.short`` too when the chain said
    the fee treasury cannot pay (the framework's ``balance`` abort 2, ENotEnough)."""
    short = isinstance(exc, MoveAbort) and exc.module == "balance" and exc.code == 2
    ids = [i if isinstance(i, int) else i[0] for i in items]
    for sid in ids:
        emit("atoma.claim.refused", network, kind="stack", id=sid, name=f"stack {sid}", node=node,
             payload={"stack_small_id": sid, "node": node, "error": f"{type(exc).__name__}: {exc}",
                      "treasury_short": short})
    if short:
        emit("atoma.treasury.short", network, kind="node", id=node, name=node,
             payload={"node": node, "stacks": ids, "error": str(exc)})


def _log_node(log, node: str, rows: list[dict]) -> None:
    """One INFO line per node: what was settled, claimed (and for how much), and what waits."""
    settled = [r for r in rows if r["action"] == "try_settle"]
    claimed = [r for r in rows if r["action"].startswith("claim")]
    waiting = [r for r in rows if r["action"] == "wait"]
    failed = [r for r in rows if r["status"] == "failed"]
    log.info(
        "%s: %d stack(s) try-settled, %d claimed for %s in node fees, %d waiting for their window, %d failed",
        node, len(settled), len(claimed), usdc(sum(r["node_fee"] or 0 for r in claimed)), len(waiting), len(failed),
    )
    for r in failed:
        log.warning("%s: %s of stack %s failed: %s", node, r["action"], r["stack_small_id"], r["note"] or r["digest"])


async def _wallet_nodes(network: AtomaNetwork, wallet: SuiWallet | None) -> list[str]:
    """Every key of the wallet that holds a NodeBadge, by alias where it has one."""
    async with open_chain(network, wallet) as chain:
        out = []
        for account in chain.wallet.accounts():
            if await lifecycle.node_small_ids(chain, account.address):
                out.append(account.alias or account.address)
        return out
