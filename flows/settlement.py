"""``settlement_run``: the ops team's scheduled run that turns served stacks into paid ones."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.logging import get_run_logger

from atoma_ops import lifecycle
from blocks import AtomaNetwork, Ledger, SuiWallet
from tasks import node as node_tasks
from tasks.labels import RunLabels, artifact_key, usdc, with_usdc
from tasks.runtime import FLOW_TIMEOUT_S, network_or_default, open_chain

_RUN = RunLabels("settlement-run", network="network", node="nodes")


class ActionLog(Sequence):
    """The rows of what a run did. Deliberately not a ``list``: Prefect walks a flow's list and dict return values
    looking for futures, which costs ~0.2 ms a row — most of a large run's overhead (thousands of rows)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __getitem__(self, index):  # type: ignore[override]
        return self.rows[index]

    def __len__(self) -> int:
        return len(self.rows)

    def __eq__(self, other: object) -> bool:
        return list(self.rows) == list(other) if isinstance(other, (list, tuple, ActionLog)) else NotImplemented

    def __repr__(self) -> str:
        return f"ActionLog({self.rows!r})"


@flow(name="settlement-run", flow_run_name=_RUN.name, timeout_seconds=FLOW_TIMEOUT_S)
@_RUN.tagged
async def settlement_run(
    nodes: list[str] | None = None,
    idle_after_s: float = 3600.0,
    exhausted_below_units: int = 1,
    settle_batch_size: int = 1000,
    claim_batch_size: int = 100,
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
    """
    network = network_or_default(network)
    log = get_run_logger()
    actions: list[dict] = []
    for node in nodes if nodes is not None else await _wallet_nodes(network, wallet):
        before = len(actions)
        candidates = await node_tasks.settle_candidates(network, wallet, node, idle_after_s, exhausted_below_units)
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
        if plan.tickets:
            claimed += await node_tasks.claim_tickets(network, wallet, ledger, node, plan.tickets, claim_batch_size)
        confidential = [(c.stack_small_id, c.used_units) for c in candidates["confidential"]]
        if confidential:
            claimed += await node_tasks.claim_confidential(network, wallet, ledger, node, confidential, claim_batch_size)
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
