"""Tasks of the node's stages: serve a batch, try-settle, replay and attest, claim."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from atoma_ops import lifecycle
from atoma_ops.serving.store import NodeStore
from blocks import AtomaNetwork, InferenceEngine, Ledger, SuiWallet

from .labels import RunLabels
from .runtime import (
    CHAIN_WRITE, READ, REPLAY_TIMEOUT_S, STEP_HOOKS, journal_for, ledger_for, open_chain, open_node, shared_engine,
)
from .signer import signer_turn


@task(
    name="serve-batch",
    task_run_name=RunLabels("serve-batch", stack="stack_small_id", node="node", suffix="lines-{start}..{stop}").name,
    **READ,
)
async def serve_batch(
    network: AtomaNetwork, wallet: SuiWallet | None, engine: InferenceEngine, node: str, stack_small_id: int,
    workload: list[dict], start: int, stop: int, workload_id: str | None = None, concurrency: int | None = None,
    node_url: str | None = None, buyer: str | None = None,
) -> lifecycle.ServeReport:
    """Send the window ``workload[start:stop]`` to the stack's node as its buyer does (HTTP, signed with the
    buyer's key, every answer's signature checked), ``concurrency`` requests at once (default
    ``engine.batch_size``). Lines the stack already served or refused under the workload's request ids are answered
    from the node's record, so a retry or a re-run resumes where serving stopped and never charges twice.

    Args:
        node: the serving node's alias or address (the stack's selected node): served here, on a loopback port,
            unless ``node_url`` names where it already runs.
        workload: every request of the stack, in the workload's order.
        workload_id: ``lifecycle.workload_id(workload)``, computed once by the flow (else here).
        node_url: a running node (``atoma-ops node serve``) to send to instead.
        buyer: who signs (alias or address of the wallet; default: the stack's owner).
    """
    width = concurrency or engine.batch_size
    if node_url is not None:
        async with open_chain(network, wallet) as chain:
            signer = await lifecycle.buyer_signer(chain, stack_small_id, buyer)
            address = chain.wallet.resolve_any(node)  # the node signs its answers with this address
            report = await lifecycle.serve_batch(
                node_url, signer, stack_small_id, workload, start, stop, concurrency=width, workload_key=workload_id,
                node_address=address,
            )
    else:
        async with open_node(network, wallet, node, engine) as service:
            signer = await lifecycle.buyer_signer(service.chain, stack_small_id, buyer, recorded=service)
            report = await lifecycle.serve_batch(
                service, signer, stack_small_id, workload, start, stop, concurrency=width, workload_key=workload_id,
            )
    log = get_run_logger()
    log.info(
        "stack %d, requests %d-%d: %d served, %d refused, %d failed, %d served before, %d refused before; "
        "%d units charged, %d left", stack_small_id, start, stop - 1, report.served, len(report.refused),
        len(report.failed), report.already_served, report.already_refused, report.units_charged, report.units_left,
    )
    if report.refused:
        log.warning("stack %d: %d request(s) refused: %s", stack_small_id, len(report.refused), report.refused[:3])
    if report.failed:
        log.warning("stack %d: %d request(s) failed (a re-run serves them): %s", stack_small_id, len(report.failed),
                    report.failed[:3])
    return report


@task(name="settle-candidates", task_run_name=RunLabels("settle-candidates", node="node").name, **READ)
async def settle_candidates(
    network: AtomaNetwork, wallet: SuiWallet | None, node: str, idle_after_s: float, exhausted_below_units: int
) -> dict[str, list[lifecycle.SettleCandidate]]:
    """The node's stacks that are exhausted, idle past ``idle_after_s``, or whose settlement was interrupted, split
    by path: ``{"tickets": […], "confidential": […]}`` (ConfidentialCompute stacks are claimed without a ticket)."""
    path = NodeStore.path_for(network.home, node)
    if not path.exists():
        return {"tickets": [], "confidential": []}
    with NodeStore(path) as store:
        found = lifecycle.settle_candidates(store, idle_after_s=idle_after_s, exhausted_below_units=exhausted_below_units)
    async with open_chain(network, wallet) as chain:
        tickets, confidential = await lifecycle.split_confidential(chain, found)
    return {"tickets": tickets, "confidential": confidential}


@task(
    name="try-settle-stacks",
    task_run_name=RunLabels("try-settle", stack="stack_small_ids", node="node").name,
    **CHAIN_WRITE,
)
async def try_settle_stacks(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, node: str, stack_small_ids: list[int]
) -> list[lifecycle.Settled]:
    """``try_settle_stack`` for each stack (a batch), commitments recomputed from the history at send time."""
    async with open_node(network, wallet, node) as service, signer_turn(service.address):
        return await lifecycle.try_settle_stacks(service, journal_for(network, ledger), stack_small_ids)


def _replay_key(context: Any, parameters: dict) -> str:
    engine: InferenceEngine = parameters["engine"]
    return "replay-{}-{}-{}".format(parameters["stack_small_id"], parameters["history_root"], "-".join(map(str, engine.cache_key())))


@task(
    name="replay-stack",
    task_run_name=RunLabels("replay-stack", stack="stack_small_id").name,
    retries=1,
    retry_delay_seconds=2,
    cache_key_fn=_replay_key,
    persist_result=True,
    timeout_seconds=REPLAY_TIMEOUT_S,
    **STEP_HOOKS,
)
async def replay_stack(
    network: AtomaNetwork, engine: InferenceEngine, stack_small_id: int, history_root: str,
    history_dir: str | None = None, history: Any = None,
) -> dict:
    """Replay the serving node's history of the stack through this node's engine (the expensive step of an
    attestation). Cached by stack, history root and engine, so a retried attestation does not replay twice.

    ``history``: the ``StackHistory`` the flow found (its root is ``history_root``), else found here.

    Returns:
        ``{"leaves": [hex…], "report": {…}}``.
    """
    if history is None:
        history = lifecycle.find_history(stack_small_id, home=network.home, history_dir=history_dir)
    report = await asyncio.to_thread(
        lifecycle.replay_history, shared_engine(engine), history, batch_size=engine.batch_size
    )
    return {"leaves": [leaf.hex() for leaf in report.replayed_leaves], "report": report.to_json()}


@task(name="fetch-history", task_run_name=RunLabels("fetch-history", stack="stack_small_id", node="node").name, **READ)
async def fetch_history(
    network: AtomaNetwork, wallet: SuiWallet | None, node: str, stack_small_id: int, history_urls: list[str]
) -> Any:
    """The serving node's history of the stack read over HTTP, signed with the attesting ``node``'s key from the
    wallet (a requested attester may read it): from the first of ``history_urls`` that has it, verified."""
    from atoma_ops.client.signing import RequestSigner

    problems = []
    async with open_chain(network, wallet) as chain:
        reader = RequestSigner(chain.wallet, node)
        for url in history_urls:
            try:
                return await lifecycle.fetch_history(stack_small_id, url, reader)
            except lifecycle.StageError as exc:
                problems.append(str(exc))
    raise lifecycle.StageError("; ".join(problems) or f"no node URL to read stack {stack_small_id}'s history from")


@task(
    name="submit-attestation",
    task_run_name=RunLabels("submit-attestation", stack="stack_small_id", node="node").name,
    **CHAIN_WRITE,
)
async def attest_stack(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, node: str, stack_small_id: int,
    replayed: dict,
) -> lifecycle.Attested:
    """``submit_stack_settlement_attestation`` with this node's commitment to the replayed leaves."""
    async with open_node(network, wallet, node) as service, signer_turn(service.address):
        return await lifecycle.submit_attestation(
            service, journal_for(network, ledger), stack_small_id,
            [bytes.fromhex(h) for h in replayed["leaves"]], replayed.get("report"),
        )


@task(name="find-attestation-requests", task_run_name=RunLabels("find-attestation-requests", node="nodes").name, **READ)
async def find_attestation_requests(network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, nodes: list[str]) -> dict:
    """Tickets asking one of ``nodes`` to attest (from the ledger, synced first): ``{"epoch", "requests"}``."""
    async with open_chain(network, wallet) as chain:
        book = ledger_for(network, ledger)
        await book.sync(chain)
        ids = {}
        for n in nodes:
            for sid in await lifecycle.node_small_ids(chain, chain.wallet.resolve(n)):
                ids[sid] = n
        epoch = await chain.current_epoch()
        requests = lifecycle.attestation_requests(book, sorted(ids), epoch)
    return {"epoch": epoch, "requests": [{**r, "node": ids[r["node_small_id"]]} for r in requests]}


@task(name="plan-claims", task_run_name=RunLabels("plan-claims", node="node").name, **READ)
async def plan_claims(network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, node: str) -> lifecycle.ClaimPlan:
    """What the node can claim now (tickets past their window; confidential stacks served), after finishing any
    claim a crash left in doubt."""
    async with open_node(network, wallet, node) as service, signer_turn(service.address):  # may re-send claims
        return await lifecycle.plan_claims(service, journal_for(network, ledger))


@task(
    name="claim-funds",
    task_run_name=RunLabels("claim-funds", stack="stack_small_ids", node="node").name,
    **CHAIN_WRITE,
)
async def claim_tickets(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, node: str, stack_small_ids: list[int],
    batch_size: int = 100, facts: list[lifecycle.ClaimFacts] | None = None,
) -> list[lifecycle.Claimed]:
    """``claim_funds`` for the tickets, ``batch_size`` per transaction (``facts``: what the plan read of them)."""
    async with open_node(network, wallet, node) as service, signer_turn(service.address):
        return await lifecycle.claim_tickets(
            service, journal_for(network, ledger), stack_small_ids, batch_size=batch_size, facts=facts
        )


@task(
    name="claim-funds-for-stacks",
    task_run_name=RunLabels("claim-funds-for-stacks", stack="stacks", node="node").name,
    **CHAIN_WRITE,
)
async def claim_confidential(
    network: AtomaNetwork, wallet: SuiWallet | None, ledger: Ledger | None, node: str,
    stacks: list[tuple[int, int]], batch_size: int = 100, facts: list[lifecycle.ClaimFacts] | None = None,
) -> list[lifecycle.Claimed]:
    """``claim_funds_for_stacks`` for ConfidentialCompute stacks: (stack small id, units served)."""
    async with open_node(network, wallet, node) as service, signer_turn(service.address):
        return await lifecycle.claim_confidential(
            service, journal_for(network, ledger), stacks, batch_size=batch_size, facts=facts
        )


__all__ = [
    "attest_stack", "claim_confidential", "claim_tickets", "find_attestation_requests", "plan_claims",
    "replay_stack", "serve_batch", "settle_candidates", "try_settle_stacks",
]
