"""Events → mirror rows: pure functions, no I/O.

The mirror is a function of the raw event log: for every entity a batch touches (a task, a node, a subscription, a
stack), the indexer refolds *all* of that entity's events from the log and replaces its rows. So applying a batch
twice, or replaying it after a crash, gives the same rows, and a row never depends on what an earlier fold wrote.

Event shapes are Sui's parsedJson (atoma-protocol.md §7): u64 as decimal strings, small ids ``{"inner": "…"}``,
TaskRole/SecurityLevel ``{"inner": n}``, ``vector<u8>`` as arrays of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import events, money
from ..protocol.constants import (
    BYTES_PER_HASH_COMMITMENT,
    INITIAL_CROSS_VALIDATION_EXTRA_NODES_CHARGE_PERMILLE,
    INITIAL_CROSS_VALIDATION_EXTRA_NODES_COUNT,
    INITIAL_SAMPLING_CONSENSUS_CHARGE_PERMILLE,
)
from ..protocol.epochs import dispute_settled_at_epoch

TASK_EVENTS = ("TaskRegisteredEvent", "TaskDeprecationEvent", "TaskRemovedEvent")
NODE_EVENTS = ("NodeRegisteredEvent", "NodePublicKeyCommittmentEvent")
SUBSCRIPTION_EVENTS = ("NodeSubscribedToTaskEvent", "NodeSubscriptionUpdatedEvent", "NodeUnsubscribedFromTaskEvent")
STACK_EVENTS = (
    "StackCreatedEvent",
    "StackTrySettleEvent",
    "NewStackSettlementAttestationEvent",
    "StackSettlementTicketEvent",
    "StackAttestationDisputeEvent",
    "StackSettlementTicketClaimedEvent",
    "ClaimedStackEvent",
)


@dataclass(frozen=True)
class Config:
    """AtomaDb fields the money math and the ticket buffer size depend on (read from the chain at each sync; the
    admin setters emit no event, so a change between a purchase and a sync shows up as a USDC check mismatch)."""

    sampling_consensus_charge_permille: int = INITIAL_SAMPLING_CONSENSUS_CHARGE_PERMILLE
    cross_validation_extra_nodes_charge_permille: int = INITIAL_CROSS_VALIDATION_EXTRA_NODES_CHARGE_PERMILLE
    cross_validation_extra_nodes_count: int = INITIAL_CROSS_VALIDATION_EXTRA_NODES_COUNT


@dataclass(frozen=True)
class Ev:
    """One stored event, as the fold reads it back from the log."""

    seq: int
    name: str
    json: dict
    sender: str | None
    epoch: int | None
    tx_digest: str


# ------------------------------------------------------------------------------------------------ decoding
#: parsedJson values, decoded by :mod:`atoma_ops.protocol.events`; a field an event may lack stays None
u64 = events.optional(events.u64)
small_id = events.optional(events.small_id)
small_ids = events.small_ids
blob = events.optional(events.byte_vector)


def event_keys(name: str, j: dict) -> tuple[int | None, int | None, int | None]:
    """(stack_small_id, task_small_id, node_small_id) an event is about, extracted once at ingest."""
    stack = small_id(j.get("stack_small_id")) if "stack_small_id" in j else None
    task = small_id(j.get("task_small_id")) if "task_small_id" in j else None
    if name in ("NewStackSettlementAttestationEvent", "StackAttestationDisputeEvent"):
        node = small_id(j.get("attestation_node_id"))
    elif "selected_node_id" in j:
        node = small_id(j["selected_node_id"])
    elif "node_small_id" in j:
        node = small_id(j["node_small_id"])
    elif "node_id" in j:
        node = small_id(j["node_id"])
    else:
        node = None
    return stack, task, node


def _safe(fn, *args) -> int | None:
    """Protocol math, or None where an input is unknown (a stack whose task the ledger never saw) or overflows
    (the chain would have refused that transaction, so it cannot be in the log)."""
    if any(a is None for a in args):
        return None
    try:
        return fn(*args)
    except (ArithmeticError, ZeroDivisionError):
        return None


# ------------------------------------------------------------------------------------------------ tasks, nodes
def fold_task(task_small_id: int, events: list[Ev]) -> dict | None:
    row: dict | None = None
    for ev in events:
        j = ev.json
        if ev.name == "TaskRegisteredEvent":
            role = j.get("role")
            level = j.get("security_level")
            row = {
                "task_small_id": task_small_id,
                "task_id": j.get("task_id"),
                "task_object_id": None,
                "role": small_id(role),
                "model_name": j.get("model_name"),
                "security_level": small_id(level) if level is not None else 0,
                "minimum_reputation_score": u64(j.get("minimum_reputation_score")),
                "is_deprecated": False,
                "deprecated_at_epoch": None,
                "is_removed": False,
                "removed_at_epoch": None,
                "registered_epoch": ev.epoch,
                "registered_tx_digest": ev.tx_digest,
            }
        elif row is None:
            continue  # a deprecation/removal of a task registered before the log starts
        elif ev.name == "TaskDeprecationEvent":
            row.update(is_deprecated=True, deprecated_at_epoch=u64(j.get("epoch")), task_object_id=j.get("task_id"))
        elif ev.name == "TaskRemovedEvent":
            row.update(is_removed=True, removed_at_epoch=u64(j.get("removed_at_epoch")), task_object_id=j.get("task_id"))
    return row


def fold_node(node_small_id: int, events: list[Ev]) -> tuple[dict | None, list[dict]]:
    row: dict | None = None
    keys: dict[int, dict] = {}
    for ev in events:
        j = ev.json
        if ev.name == "NodeRegisteredEvent":
            row = {
                "node_small_id": node_small_id,
                "badge_id": j.get("badge_id"),
                "node_sui_address": ev.sender,
                "registered_epoch": ev.epoch,
                "registered_tx_digest": ev.tx_digest,
            }
        elif ev.name == "NodePublicKeyCommittmentEvent":
            device = int(j.get("device_type"))
            keys[device] = {
                "node_small_id": node_small_id,
                "device_type": device,
                "epoch": u64(j.get("epoch")),
                "key_rotation_counter": u64(j.get("key_rotation_counter")),
                "public_key_bytes": blob(j.get("new_public_key")),
                "evidence_data_bytes": blob(j.get("evidence_bytes")),
            }
    return row, list(keys.values())


def fold_subscription(task_small_id: int, node_small_id: int, events: list[Ev]) -> dict | None:
    row: dict | None = None
    for ev in events:
        j = ev.json
        if ev.name == "NodeSubscribedToTaskEvent":
            row = {
                "task_small_id": task_small_id,
                "node_small_id": node_small_id,
                "price_per_one_million_compute_units": u64(j.get("price_per_one_million_compute_units")),
                "max_num_compute_units": u64(j.get("max_num_compute_units")),
                "valid": True,
                "subscribed_epoch": ev.epoch,
                "updated_epoch": ev.epoch,
            }
        elif row is None:
            continue
        elif ev.name == "NodeSubscriptionUpdatedEvent":
            row.update(
                price_per_one_million_compute_units=u64(j.get("price_per_one_million_compute_units")),
                max_num_compute_units=u64(j.get("max_num_compute_units")),
                updated_epoch=ev.epoch,
            )
        elif ev.name == "NodeUnsubscribedFromTaskEvent":
            row.update(valid=False, updated_epoch=ev.epoch)
    return row


# ------------------------------------------------------------------------------------------------ stacks
@dataclass
class StackRows:
    stack: dict | None = None
    ticket: dict | None = None
    attestations: list[dict] | None = None
    disputes: list[dict] | None = None
    claim: dict | None = None
    credits: list[dict] | None = None


def fold_stack(stack_small_id: int, events: list[Ev], security_levels: dict[int, int], cfg: Config) -> StackRows:
    """All rows one stack's events produce, following §4.9–§4.14 of the contract."""
    out = StackRows(attestations=[], disputes=[], credits=[])
    stack: dict | None = None
    ticket: dict | None = None
    extra = cfg.cross_validation_extra_nodes_count
    scp = cfg.sampling_consensus_charge_permille
    level: int | None = None
    price: int | None = None
    units: int | None = None
    for ev in events:
        j = ev.json
        name = ev.name
        if name == "StackCreatedEvent":
            task = small_id(j.get("task_small_id"))
            level = security_levels.get(task)
            price = u64(j.get("price_per_one_million_compute_units"))
            units = u64(j.get("num_compute_units"))
            stack = {
                "stack_small_id": stack_small_id,
                "stack_id": j.get("stack_id"),
                "owner_address": j.get("owner"),
                "task_small_id": task,
                "selected_node_id": small_id(j.get("selected_node_id")),
                "num_compute_units": units,
                "price_per_one_million_compute_units": price,
                "security_level": level,
                "created_epoch": ev.epoch,
                "created_tx_digest": ev.tx_digest,
                "expected_payment": _safe(
                    money.stack_payment, level, price, units, scp, cfg.cross_validation_extra_nodes_charge_permille
                ),
                "in_settle_period": False,
                "is_in_dispute": False,
                "is_claimed": False,
                "claim_path": None,
                "claimed_epoch": None,
                "num_claimed_compute_units": None,
                "user_refund_amount": None,
                "deleted_on_chain": False,
            }
        elif name == "StackTrySettleEvent":
            leaf = blob(j.get("stack_merkle_leaf")) or b""
            claimed = u64(j.get("num_claimed_compute_units"))
            ticket = {
                "stack_small_id": stack_small_id,
                "selected_node_id": small_id(j.get("selected_node_id")),
                "num_claimed_compute_units": claimed,
                "requested_attestation_nodes": small_ids(j.get("requested_attestation_nodes")),
                "committed_stack_proof": blob(j.get("committed_stack_proof")),
                # sized as the contract does (§4.10 step 7), not as the node daemon did
                "stack_merkle_leaves": leaf + bytes(BYTES_PER_HASH_COMMITMENT * extra),
                "leaves_complete": True,
                "settled_epoch": ev.epoch,
                "dispute_settled_at_epoch": None if ev.epoch is None else dispute_settled_at_epoch(ev.epoch),
                "settled_tx_digest": ev.tx_digest,
                "already_attested_nodes": [],
                "attestations_completed_epoch": None,
                "is_in_dispute": False,
                "is_claimed": False,
                "claimed_epoch": None,
                "user_refund_amount": None,
                "node_fee_expected": _safe(money.stack_fee_amount, level, price, claimed, scp),
                "refund_expected": _safe(
                    money.stack_fee_amount, level, price, None if units is None else units - claimed, scp
                ),
                "attester_credits_expected": 0,
            }
            if stack is not None:
                stack["in_settle_period"] = True
        elif name == "NewStackSettlementAttestationEvent":
            node = small_id(j.get("attestation_node_id"))
            leaf = blob(j.get("stack_merkle_leaf"))
            slot = None
            if ticket is not None:
                requested = ticket["requested_attestation_nodes"]
                if node in requested:
                    slot = requested.index(node) + 1
                    start = slot * BYTES_PER_HASH_COMMITMENT
                    leaves = bytearray(ticket["stack_merkle_leaves"])
                    if leaf is not None and start + BYTES_PER_HASH_COMMITMENT <= len(leaves):
                        leaves[start : start + BYTES_PER_HASH_COMMITMENT] = leaf
                        ticket["stack_merkle_leaves"] = bytes(leaves)
                    else:
                        ticket["leaves_complete"] = False
                ticket["already_attested_nodes"].append(node)
            out.attestations.append(
                {
                    "stack_small_id": stack_small_id,
                    "seq": ev.seq,
                    "attestation_node_id": node,
                    "slot": slot,
                    "committed_stack_proof": blob(j.get("committed_stack_proof")),
                    "stack_merkle_leaf": leaf,
                    "epoch": ev.epoch,
                    "tx_digest": ev.tx_digest,
                    "completes_ticket": False,
                }
            )
        elif name == "StackSettlementTicketEvent":
            if ticket is not None:
                # the event carries the current epoch; the stored ticket keeps E + 1 (§4.11 step 9)
                ticket["attestations_completed_epoch"] = u64(j.get("dispute_settled_at_epoch"))
            for att in reversed(out.attestations):
                if att["tx_digest"] == ev.tx_digest:
                    att["completes_ticket"] = True
                    break
        elif name == "StackAttestationDisputeEvent":
            node = small_id(j.get("attestation_node_id"))
            commitment = blob(j.get("attestation_commitment"))
            original = blob(j.get("original_commitment"))
            cause = "started_directly"
            if ticket is not None:
                requested = ticket["requested_attestation_nodes"]
                if node in requested and commitment != original:
                    cause = "proof_mismatch"  # §4.11 step 7 (or a direct call by a requested node: same effect)
                elif (
                    node in requested
                    and commitment == original
                    and len(ticket["already_attested_nodes"]) + 1 == len(requested)
                ):
                    # §4.11 step 9: the last attester's leaf was written and the node counted before the final hash
                    # check failed; the leaf itself is in no event, so the buffer cannot be rebuilt
                    cause = "final_check_failed"
                    ticket["already_attested_nodes"].append(node)
                    ticket["leaves_complete"] = False
                ticket["is_in_dispute"] = True
            if stack is not None:
                stack["is_in_dispute"] = True
            out.disputes.append(
                {
                    "stack_small_id": stack_small_id,
                    "seq": ev.seq,
                    "attestation_node_id": node,
                    "attestation_commitment": commitment,
                    "original_node_id": small_id(j.get("original_node_id")),
                    "original_commitment": original,
                    "epoch": ev.epoch,
                    "tx_digest": ev.tx_digest,
                    "cause": cause,
                }
            )
        elif name in ("StackSettlementTicketClaimedEvent", "ClaimedStackEvent"):
            ticket_path = name == "StackSettlementTicketClaimedEvent"
            claimed = u64(j.get("num_claimed_compute_units"))
            refund = u64(j.get("user_refund_amount"))
            if ticket_path:
                node_fee = _safe(money.stack_fee_amount, level, price, claimed, scp)
                refund_expected = _safe(
                    money.stack_fee_amount, level, price, None if units is None else units - claimed, scp
                )
                requested = small_ids(j.get("attestation_nodes"))
                attested = list(ticket["already_attested_nodes"]) if ticket is not None else []
            else:
                node_fee = _safe(money.confidential_claim_amount, price, claimed)
                refund_expected = _safe(
                    money.confidential_claim_amount, price, None if units is None else units - claimed
                )
                requested, attested = [], []
            credit_each = _safe(money.attester_credit, node_fee, extra) if requested else None
            credits_total = 0
            for position, node in enumerate(requested):  # duplicates are processed (and credited) twice
                if node in attested and credit_each is not None:
                    credits_total += credit_each
                    out.credits.append(
                        {
                            "stack_small_id": stack_small_id,
                            "position": position,
                            "node_small_id": node,
                            "amount": credit_each,
                            "claim_tx_digest": ev.tx_digest,
                            "claim_seq": ev.seq,
                            "claimed_epoch": ev.epoch,
                        }
                    )
            out.claim = {
                "stack_small_id": stack_small_id,
                "claim_path": "ticket" if ticket_path else "confidential",
                "seq": ev.seq,
                "claim_tx_digest": ev.tx_digest,
                "claimed_epoch": ev.epoch,
                "claimer_address": ev.sender,
                "selected_node_id": small_id(j.get("selected_node_id")),
                "task_small_id": stack["task_small_id"] if stack else None,
                "security_level": level,
                "owner_address": stack["owner_address"] if stack else None,
                "num_compute_units": units,
                "num_claimed_compute_units": claimed,
                "price_per_one_million_compute_units": price,
                "paid_amount": stack["expected_payment"] if stack else None,
                "node_fee": node_fee,
                "refund_expected": refund_expected,
                "user_refund_amount": refund,
                "attestation_nodes": requested,
                "attested_nodes": attested,
                "attester_credit_each": credit_each,
                "attester_credits_total": credits_total,
            }
            if ticket_path and ticket is not None:
                ticket.update(is_claimed=True, claimed_epoch=ev.epoch, user_refund_amount=refund)
            if stack is not None:
                stack.update(
                    is_claimed=True,
                    claim_path=out.claim["claim_path"],
                    claimed_epoch=ev.epoch,
                    num_claimed_compute_units=claimed,
                    user_refund_amount=refund,
                    deleted_on_chain=ticket_path,
                )
    if ticket is not None:
        each = _safe(money.attester_credit, ticket["node_fee_expected"], extra)
        attested = ticket["already_attested_nodes"]
        n = sum(1 for node in ticket["requested_attestation_nodes"] if node in attested)
        ticket["attester_credits_expected"] = (each or 0) * n
    out.stack = stack
    out.ticket = ticket
    return out
