"""Stage 6, try-settle: close stacks to new requests and open their settlement tickets, committing to each
history at send time; which stacks are due, and which go the confidential way instead.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Sequence

from ..chain.port import Chain
from ..journal import (
    FINISHED,
    Intent,
    JournalStore,
    execute_intents,
)
from ..protocol.commitments import Commitment, commit
from ..protocol.constants import SecurityLevel
from ..protocol.events import decode_event
from ..serving.metering import StackNotFound, StackNotServedHere, StackSettling
from ..serving.node import NodeService
from ..serving.store import NodeStore


@dataclass
class Settled:
    """What became of one stack's try-settle (JSON-serialisable: a Prefect task result). ``status``: success |
    already_done | failed | skipped (``error`` says why); the commitment is the one the ticket holds."""

    stack_small_id: int
    status: str
    claimed_units: int
    num_requests: int
    digest: str | None
    requested_attestation_nodes: list[int] = field(default_factory=list)
    error: str | None = None
    dispute_settled_at_epoch: int | None = None
    root: str | None = None
    committed_stack_proof: str | None = None
    stack_merkle_leaf: str | None = None
    cross_validation_extra_nodes_count: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in FINISHED

    def settlement_doc(self) -> dict:
        """The settlement as the node's store keeps it and ``stack try-settle --json`` prints it (position 0: the
        selected node's own commitment)."""
        return {
            "stack_small_id": self.stack_small_id,
            "root": self.root,
            "committed_stack_proof": self.committed_stack_proof,
            "stack_merkle_leaf": self.stack_merkle_leaf,
            "position": 0,
            "num_requests": self.num_requests,
            "num_claimed_compute_units": self.claimed_units,
            "cross_validation_extra_nodes_count": self.cross_validation_extra_nodes_count,
            "digest": self.digest,
            "requested_attestation_nodes": list(self.requested_attestation_nodes),
            "dispute_settled_at_epoch": self.dispute_settled_at_epoch,
        }

    @classmethod
    def from_doc(cls, doc: dict, status: str) -> "Settled":
        return cls(
            doc["stack_small_id"], status, doc.get("num_claimed_compute_units", 0), doc.get("num_requests", 0),
            doc.get("digest"), list(doc.get("requested_attestation_nodes", [])),
            dispute_settled_at_epoch=doc.get("dispute_settled_at_epoch"), root=doc.get("root"),
            committed_stack_proof=doc.get("committed_stack_proof"), stack_merkle_leaf=doc.get("stack_merkle_leaf"),
            cross_validation_extra_nodes_count=doc.get("cross_validation_extra_nodes_count"),
        )


async def try_settle_stacks(service: NodeService, journal: JournalStore, stack_small_ids: Sequence[int]) -> list[Settled]:
    """Close each stack to new requests and settle it with a commitment recomputed from its history just before
    signing. A ticket already on chain with this history's proof counts as done; one with another proof is an
    error for that stack (the others go on). The store is written once per batch, not once per stack."""
    settled, _ = await _try_settle(service, journal, stack_small_ids)
    return settled


async def try_settle_stack(service: NodeService, journal: JournalStore, stack_small_id: int) -> Settled:
    """One stack (the CLI's ``stack try-settle``), after checking that it exists and was sold to this node; a stack
    that cannot be settled raises why (``StackNotFound``, ``StackNotServedHere``, ``StackBusy``, ``StackSettling``,
    ``NothingToCommit``, or the chain's refusal)."""
    stack = await service.chain.get_stack(stack_small_id)
    if stack is None:
        raise StackNotFound(f"stack {stack_small_id} does not exist (or was claimed)", stack_small_id=stack_small_id)
    if stack.selected_node_id != service.node_small_id:
        raise StackNotServedHere(
            f"stack {stack_small_id} was sold to node {stack.selected_node_id}; this is node {service.node_small_id}",
            stack_small_id=stack_small_id,
        )
    (settled,), errors = await _try_settle(service, journal, [stack_small_id])
    if stack_small_id in errors:
        raise errors[stack_small_id]
    return settled


async def _try_settle(
    service: NodeService, journal: JournalStore, stack_small_ids: Sequence[int]
) -> tuple[list[Settled], dict[int, BaseException]]:
    chain = service.chain
    store = service.store
    extra = (await chain.db_config()).cross_validation_extra_nodes_count
    begun = await asyncio.to_thread(store.begin_settlements, list(stack_small_ids))
    out: dict[int, Settled] = {}
    errors: dict[int, BaseException] = {}
    open_ids = []
    for sid, state in zip(stack_small_ids, begun):
        if isinstance(state, Exception):
            out[sid], errors[sid] = Settled(sid, "skipped", 0, 0, None, error=str(state)), state
        elif state == "settled":  # settled by an earlier run: report what it recorded
            usage = store.usage(sid)
            doc = (usage.settlement if usage else None) or {}
            out[sid] = Settled.from_doc({"stack_small_id": sid, **doc}, "already_done")
        else:
            open_ids.append(sid)
    # the history is final now that the stacks take no more requests: commit to it once, at send time, from the
    # frontier of subtree roots the store folded each leaf into as it was recorded (O(log N), never every leaf)
    commitments: dict[int, tuple[int, int, Commitment]] = {}

    def commitment(sid: int) -> tuple[int, int, Commitment]:
        """(requests, units, commitment) of the stack's history."""
        if sid not in commitments:
            kept = store.frontier(sid)
            if kept is None:  # nothing served here: commit() names it (an empty history has nothing to commit to)
                history = store.history(sid)
                commitments[sid] = (len(history), history.units, commit(history.leaves, extra, 0))
            else:
                num_requests, units, frontier = kept
                commitments[sid] = (num_requests, units, frontier.commit(extra, 0))
        return commitments[sid]

    intents: list[Intent] = []
    for sid in open_ids:

        async def resolve(sid_: int = sid) -> dict:
            _, units, c = commitment(sid_)
            return {
                "stack_small_id": sid_,
                "num_claimed_compute_units": units,
                "committed_stack_proof": c.committed_stack_proof,
                "stack_merkle_leaf": c.stack_merkle_leaf,
                "node_small_id": service.node_small_id,
            }

        async def done(sid_: int = sid) -> bool:
            ticket = await chain.get_ticket(sid_)
            if ticket is None:
                return False
            if ticket.committed_stack_proof != commitment(sid_)[2].committed_stack_proof:
                raise StackSettling(f"stack {sid_} already has a settlement ticket with another proof", stack_small_id=sid_)
            return True

        intents.append(Intent(f"try_settle_stack:{sid}", "try_settle_stack", service.address, resolve=resolve, done=done,
                              stack_small_ids=(sid,)))
    results = await execute_intents(chain, journal, intents, raise_on_failure=False) if intents else []
    failed, finished = [], {}
    for sid, r in zip(open_ids, results):
        if not r.ok:
            failed.append(sid)
            out[sid] = Settled(sid, "failed", 0, 0, r.digest, error=str(r.error))
            if r.error is not None:
                errors[sid] = r.error
            continue
        num_requests, units, c = commitment(sid)
        nodes: list[int] = []
        last_epoch = None
        if r.tx is not None:
            event = decode_event("StackTrySettleEvent", r.tx.event("StackTrySettleEvent").parsed_json)
            nodes = list(event.get("requested_attestation_nodes", []))
            last_epoch = r.tx.epoch + 1
        else:
            ticket = await chain.get_ticket(sid)
            if ticket is not None:
                nodes, last_epoch = list(ticket.requested_attestation_nodes), ticket.dispute_settled_at_epoch
        out[sid] = Settled(
            sid, r.status, units, num_requests, r.digest, nodes, dispute_settled_at_epoch=last_epoch,
            root="0x" + c.root.hex(), committed_stack_proof="0x" + c.committed_stack_proof.hex(),
            stack_merkle_leaf="0x" + c.stack_merkle_leaf.hex(), cross_validation_extra_nodes_count=extra,
        )
        finished[sid] = out[sid].settlement_doc()
    if failed:
        await asyncio.to_thread(store.abort_settlements, failed)
    if finished:
        await asyncio.to_thread(store.finish_settlements, finished)
    return [out[s] for s in stack_small_ids], errors


@dataclass
class SettleCandidate:
    stack_small_id: int
    reason: str  # exhausted | idle
    used_units: int
    num_compute_units: int


def settle_candidates(
    store: NodeStore, *, now_ms: int | None = None, idle_after_s: float = 3600.0, exhausted_below_units: int = 1
) -> list[SettleCandidate]:
    """Stacks this node served that are still open, or whose settlement was interrupted, and are exhausted (fewer
    than ``exhausted_below_units`` units left) or idle (nothing served for ``idle_after_s``)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    last = store.last_served_ms()
    out = []
    for u in store.stacks():
        if u.num_requests == 0 or u.in_flight or u.state == "settled":
            continue
        if u.state == "settling":
            out.append(SettleCandidate(u.stack_small_id, "interrupted", u.used_units, u.num_compute_units))
        elif u.units_left < exhausted_below_units:
            out.append(SettleCandidate(u.stack_small_id, "exhausted", u.used_units, u.num_compute_units))
        elif now_ms - last.get(u.stack_small_id, now_ms) >= idle_after_s * 1000:
            out.append(SettleCandidate(u.stack_small_id, "idle", u.used_units, u.num_compute_units))
    return out


async def split_confidential(chain: Chain, candidates: Sequence[SettleCandidate]) -> tuple[list[SettleCandidate], list[SettleCandidate]]:
    """(ticket path, confidential path): ConfidentialCompute stacks are claimed with ``claim_funds_for_stacks`` and
    never try-settled; every other stack goes through a settlement ticket."""
    levels: dict[int, int | None] = {}
    tickets, confidential = [], []
    for c in candidates:
        stack = await chain.get_stack(c.stack_small_id)
        if stack is None or stack.is_claimed:
            continue
        if stack.task_small_id not in levels:
            task = await chain.get_task(stack.task_small_id)
            levels[stack.task_small_id] = task.security_level if task else None
        (confidential if levels[stack.task_small_id] == SecurityLevel.CONFIDENTIAL_COMPUTE else tickets).append(c)
    return tickets, confidential
