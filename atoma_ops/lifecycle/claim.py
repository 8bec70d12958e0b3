"""Stage 8, claim: what this node can claim now (settled tickets past their window, ConfidentialCompute stacks),
and the claims, batched, journaled as one batch; batches a crash left in doubt are finished first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..journal import (
    Intent,
    JournalStore,
    execute_intents,
    resolve_pending,
)
from ..protocol import money
from ..protocol.constants import SecurityLevel
from ..protocol.events import decode_event
from ..serving.node import NodeService
from .common import StageError


@dataclass
class Claimed:
    stack_small_id: int
    path: str  # ticket | confidential
    units: int
    node_fee: int | None  # None for a claim recovered after a crash (its stack is gone from chain)
    refund: int
    digest: str | None
    status: str


@dataclass
class ClaimFacts:
    """What a plan read of a stack and that its claim needs (the amounts the claim pays), carried to the claim so
    it does not read them again: the stack's price and size, its task's security level, the units to claim."""

    stack_small_id: int
    price_per_one_million_compute_units: int
    num_compute_units: int
    security_level: int
    units: int


@dataclass
class ClaimPlan:
    tickets: list[int]  # claim_funds
    confidential: list[tuple[int, int]]  # claim_funds_for_stacks: (stack, units)
    waiting: list[dict]  # not yet claimable, and why
    recovered: list[Claimed] = field(default_factory=list)  # claims a crash had left in doubt, finished now
    claimed: list[int] = field(default_factory=list)  # stacks of this node claimed before: nothing left to do
    facts: list[ClaimFacts] = field(default_factory=list)  # what the plan read of the claimable stacks


async def recover_claims(service: NodeService, journal: JournalStore | None) -> list[Claimed]:
    """Finish claim batches a crash left ``pending``: their stacks may be gone from chain already, so no plan would
    rebuild them. Each is resolved by digest (or its identical bytes re-sent) and its stacks are marked claimed."""
    if journal is None:
        return []
    results = await resolve_pending(
        service.chain, journal, sender=service.address, kinds=("claim_funds", "claim_funds_for_stacks")
    )
    claimed: dict[int, str] = {}
    out: list[Claimed] = []
    for r in results:
        if not r.ok:
            continue
        ids = list(r.stack_small_ids)  # the batch's stacks, from its journal row
        claimed.update({sid: r.digest or "" for sid in ids})
        path = "ticket" if r.function == "claim_funds" else "confidential"
        events = {}
        if r.tx is not None:
            for e in r.tx.events:
                if e.name in ("StackSettlementTicketClaimedEvent", "ClaimedStackEvent"):
                    event = decode_event(e.name, e.parsed_json)
                    events[event.stack_small_id] = event
        for sid in ids:
            e = events.get(sid)
            # the stacks are gone (or marked claimed): the node fee is not in the event, only in the balance change
            out.append(Claimed(sid, path, e.num_claimed_compute_units if e else 0, None,
                               e.user_refund_amount if e else 0, r.digest, r.status))
    if claimed:
        await asyncio.to_thread(service.store.note_claimed_many, claimed)
    return out


async def plan_claims(service: NodeService, journal: JournalStore | None = None) -> ClaimPlan:
    """What this node can claim now, from the stacks its store settled (and confidential stacks it served)."""
    chain = service.chain
    recovered = await recover_claims(service, journal)
    epoch = await chain.current_epoch()
    plan = ClaimPlan([], [], [], recovered)
    tasks: dict[int, Any] = {}
    for u in await asyncio.to_thread(service.store.stacks):
        settlement = u.settlement or {}
        if settlement.get("claimed_digest"):
            plan.claimed.append(u.stack_small_id)
            continue
        claimable_from = settlement.get("dispute_settled_at_epoch")
        if u.state == "settled" and claimable_from is not None and epoch < claimable_from:
            # the ticket's epoch never changes: no chain read needed to know it must wait
            plan.waiting.append({"stack_small_id": u.stack_small_id, "why": f"claimable from epoch {claimable_from} (now {epoch})"})
            continue
        stack = await chain.get_stack(u.stack_small_id)
        if stack is None or stack.is_claimed:  # claim_funds deletes the stack; the confidential path marks it
            plan.claimed.append(u.stack_small_id)
            continue
        if stack.task_small_id not in tasks:
            tasks[stack.task_small_id] = await chain.get_task(stack.task_small_id)
        task = tasks[stack.task_small_id]
        level = task.security_level if task is not None else 0

        def read(units: int, stack: Any = stack, level: int = level) -> ClaimFacts:
            return ClaimFacts(stack.stack_small_id, stack.price_per_one_million_compute_units, stack.num_compute_units,
                              level, units)

        if level == SecurityLevel.CONFIDENTIAL_COMPUTE:
            if u.state == "open" and u.num_requests and not u.in_flight:
                plan.confidential.append((u.stack_small_id, u.used_units))
                plan.facts.append(read(u.used_units))
            continue
        if u.state != "settled":
            continue
        ticket = await chain.get_ticket(u.stack_small_id)
        if ticket is None:
            continue
        if ticket.is_in_dispute:
            plan.waiting.append({"stack_small_id": u.stack_small_id, "why": "in dispute (terminal: never claimable)"})
        elif epoch < ticket.dispute_settled_at_epoch:
            plan.waiting.append({"stack_small_id": u.stack_small_id, "why": f"claimable from epoch {ticket.dispute_settled_at_epoch} (now {epoch})"})
        else:
            plan.tickets.append(u.stack_small_id)
            plan.facts.append(read(ticket.num_claimed_compute_units))
    return plan


async def claim_tickets(
    service: NodeService, journal: JournalStore, stack_small_ids: Sequence[int], *, batch_size: int = 100,
    facts: Sequence[ClaimFacts] | None = None,
) -> list[Claimed]:
    """``claim_funds`` for settled tickets whose window has passed, ``batch_size`` tickets per transaction. ``facts``:
    what :func:`plan_claims` read of them (else read here)."""
    return await _claim(service, journal, [(s, None) for s in stack_small_ids], "ticket", batch_size, facts)


async def claim_confidential(
    service: NodeService, journal: JournalStore, stacks: Sequence[tuple[int, int]], *, batch_size: int = 100,
    facts: Sequence[ClaimFacts] | None = None,
) -> list[Claimed]:
    """``claim_funds_for_stacks`` for ConfidentialCompute stacks: (stack small id, units to claim)."""
    return await _claim(service, journal, list(stacks), "confidential", batch_size, facts)


async def _facts(chain: Any, sid: int, units: int | None, tasks: dict[int, Any]) -> ClaimFacts | None:
    """A stack's claim facts read from chain (for a claim made without a plan's)."""
    stack = await chain.get_stack(sid)
    if stack is None:
        return None
    if stack.task_small_id not in tasks:
        tasks[stack.task_small_id] = await chain.get_task(stack.task_small_id)
    task = tasks[stack.task_small_id]
    if units is None:
        ticket = await chain.get_ticket(sid)
        units = ticket.num_claimed_compute_units if ticket else 0
    return ClaimFacts(sid, stack.price_per_one_million_compute_units, stack.num_compute_units,
                      task.security_level if task else 0, units)


async def _claim(
    service: NodeService, journal: JournalStore, items: list[tuple[int, int | None]], path: str, batch_size: int,
    facts: Sequence[ClaimFacts] | None = None,
) -> list[Claimed]:
    """One claim transaction per ``batch_size`` items, all of them journaled as one batch of intents (one ledger
    read and two ledger writes per call, not per transaction: a ledger write costs ~0.1 s). Every transaction is
    submitted; then the successful ones are noted in the store and, if the chain refused one, its error is raised."""
    chain = service.chain
    config = await chain.db_config()
    known = {f.stack_small_id: f for f in facts or ()}
    tasks: dict[int, Any] = {}
    batches: list[tuple[list[int], dict[int, tuple[int, int, int]]]] = []
    intents: list[Intent] = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        ids = [s for s, _ in batch]
        amounts: dict[int, tuple[int, int, int]] = {}
        for sid, units in batch:
            f = known.get(sid)
            if f is None or (units is not None and f.units != units):
                f = await _facts(chain, sid, units, tasks)
            if f is None:
                continue
            price, rest = f.price_per_one_million_compute_units, f.num_compute_units - f.units
            if path == "ticket":
                charge = config.sampling_consensus_charge_permille
                fee = money.stack_fee_amount(f.security_level, price, f.units, charge)
                refund = money.stack_fee_amount(f.security_level, price, rest, charge)
            else:
                fee = money.confidential_claim_amount(price, f.units)
                refund = money.confidential_claim_amount(price, rest)
            amounts[sid] = (f.units, fee, refund)

        async def done(ids_: list[int] = ids) -> bool:
            for sid in ids_:
                stack = await chain.get_stack(sid)
                if stack is not None and not stack.is_claimed:
                    return False
            return True

        key = ",".join(map(str, ids))
        if path == "ticket":
            intent = Intent(f"claim_funds:{service.node_small_id}:{key}", "claim_funds", service.address,
                            {"settled_ticket_ids": ids, "node_small_id": service.node_small_id}, done=done,
                            stack_small_ids=tuple(ids))
        else:
            intent = Intent(f"claim_funds_for_stacks:{service.node_small_id}:{key}", "claim_funds_for_stacks", service.address,
                            {"stack_small_ids": ids, "num_compute_units_per_stack_to_claim": [u for _, u in batch],
                             "node_small_id": service.node_small_id}, done=done, stack_small_ids=tuple(ids))
        intents.append(intent)
        batches.append((ids, amounts))
    results = await execute_intents(chain, journal, intents, raise_on_failure=False) if intents else []
    claimed: list[Claimed] = []
    noted: dict[int, str] = {}
    refused: BaseException | None = None
    for (ids, amounts), result in zip(batches, results):
        if not result.ok:
            refused = refused or result.error or StageError(f"{result.key}: {result.status}")
            continue
        for sid in ids:
            units, fee, refund = amounts.get(sid, (0, 0, 0))
            claimed.append(Claimed(sid, path, units, fee, refund, result.digest, result.status))
            noted[sid] = result.digest or ""
    if noted:
        await asyncio.to_thread(service.store.note_claimed_many, noted)
    if refused is not None:
        raise refused
    return claimed
