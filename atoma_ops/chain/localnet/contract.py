"""``atoma::db`` entry functions, check for check in the contract's order (atoma-protocol.md §4).

Each function runs inside one SQLite transaction opened by the engine; raising ``MoveAbort`` (or
``MoveArithmeticError``) makes the engine roll everything back. Reads of a missing table key abort the way the Sui
framework does (``dynamic_field`` code 1), not with an Atoma code, exactly where the contract has no explicit check.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any, Callable

from ...protocol import money
from ...protocol.constants import (
    BYTES_PER_HASH_COMMITMENT,
    COMPUTE_UNITS_PER_STACK,
    MAX_REPUTATION_SCORE,
    PERMILLE,
    REPUTATION_SCORE_START,
    SecurityLevel,
    is_valid_security_level,
    is_valid_task_role,
)
from ...protocol.epochs import (
    attestation_window_open,
    claimable,
    dispute_settled_at_epoch,
    node_destroyable,
    task_removable_by_admin,
    task_removable_by_badge,
)
from .._json import dumps, loads
from ..errors import ExecutionFailure, MoveAbort, MoveArithmeticError
from .ctx import Ctx


def abort(name: str) -> MoveAbort:
    return MoveAbort.db(name)


# Sui's largest Move object (protocol config max_move_object_size): a ticket's leaves buffer past it cannot exist.
MAX_MOVE_OBJECT_SIZE = 250 * 1024

FIELD_ALREADY_EXISTS = ("dynamic_field", 0, "EFieldAlreadyExists")
FIELD_DOES_NOT_EXIST = ("dynamic_field", 1, "EFieldDoesNotExist")


class Table:
    """A ``Table``/``ObjectTable`` of AtomaDb (or a badge's dynamic fields) stored as JSON rows."""

    def __init__(self, ctx: "Ctx", name: str):
        self.ctx = ctx
        self.name = name

    def _key(self, key: Any) -> str:
        return ":".join(str(k) for k in key) if isinstance(key, tuple) else str(key)

    def get(self, key: Any) -> dict | None:
        row = self.ctx.conn.execute(
            "SELECT value FROM kv WHERE tbl = ? AND key = ?", (self.name, self._key(key))
        ).fetchone()
        return None if row is None else loads(row[0])

    def contains(self, key: Any) -> bool:
        return (
            self.ctx.conn.execute(
                "SELECT 1 FROM kv WHERE tbl = ? AND key = ?", (self.name, self._key(key))
            ).fetchone()
            is not None
        )

    def borrow(self, key: Any) -> dict:
        value = self.get(key)
        if value is None:
            raise MoveAbort(*FIELD_DOES_NOT_EXIST)
        return value

    def add(self, key: Any, value: dict) -> None:
        try:
            self.ctx.conn.execute(
                "INSERT INTO kv(tbl, key, value) VALUES (?, ?, ?)", (self.name, self._key(key), dumps(value))
            )
        except sqlite3.IntegrityError:
            raise MoveAbort(*FIELD_ALREADY_EXISTS) from None

    def put(self, key: Any, value: dict) -> None:
        cur = self.ctx.conn.execute(
            "UPDATE kv SET value = ? WHERE tbl = ? AND key = ?", (dumps(value), self.name, self._key(key))
        )
        if cur.rowcount != 1:
            raise MoveAbort(*FIELD_DOES_NOT_EXIST)

    def remove(self, key: Any) -> dict:
        value = self.borrow(key)
        self.ctx.conn.execute("DELETE FROM kv WHERE tbl = ? AND key = ?", (self.name, self._key(key)))
        return value

    def remove_prefix(self, prefix: Any) -> None:
        self.ctx.conn.execute(
            "DELETE FROM kv WHERE tbl = ? AND key LIKE ?", (self.name, f"{self._key(prefix)}:%")
        )


def sid(n: int) -> dict:
    """Sui's JSON for a small id struct."""
    return {"inner": str(n)}


def check_u64(value: int) -> int:
    try:
        return money.u64(value)
    except money.U64Overflow as exc:
        raise MoveArithmeticError(str(exc)) from None


def _arith(fn: Callable[..., int], *args: int) -> int:
    try:
        return fn(*args)
    except money.U64Overflow as exc:
        raise MoveArithmeticError(str(exc)) from None
    except ZeroDivisionError:
        raise MoveArithmeticError("division by zero") from None


class AtomaDb:
    """The entry functions. ``ctx.db`` holds AtomaDb's scalar fields; tables live in ``kv``."""

    def __init__(self, ctx: "Ctx"):
        self.ctx = ctx
        self.db = ctx.db
        self.nodes = Table(ctx, "nodes")
        self.tasks = Table(ctx, "tasks")
        self.subscribed_nodes = Table(ctx, "subscribed_nodes")  # (task, node) -> NodePriceData
        self.badge_task_fields = Table(ctx, "badge_task_fields")  # (node badge id, task) -> true
        self.stacks = Table(ctx, "stacks")
        self.tickets = Table(ctx, "stack_settlement_tickets")

    # ------------------------------------------------------------------ helpers
    @property
    def epoch(self) -> int:
        return self.ctx.epoch

    def _next_id(self, counter: str) -> int:
        value = self.db[counter]
        self.db[counter] = check_u64(value + 1)
        return value

    def _fee_treasury_split(self, amount: int) -> None:
        if amount > self.db["fee_treasury"]:
            raise MoveAbort("balance", 2, "ENotEnough")
        self.db["fee_treasury"] -= amount

    def _pay(self, recipient: str, amount: int) -> None:
        """Split ``amount`` from the fee treasury into a new coin for ``recipient``."""
        self._fee_treasury_split(amount)
        self.ctx.create_coin(recipient, amount)

    def _attribute_fee_to_node(self, node_small_id: int, amount: int) -> None:
        node = self.nodes.get(node_small_id)
        if node is None:
            return
        if node["last_fee_epoch"] == self.epoch:
            node["last_fee_epoch_amount"] = check_u64(node["last_fee_epoch_amount"] + amount)
        else:
            node["available_fee_amount"] = check_u64(node["available_fee_amount"] + node["last_fee_epoch_amount"])
            node["last_fee_epoch_amount"] = amount
            node["last_fee_epoch"] = self.epoch
        self.nodes.put(node_small_id, node)

    def _withdraw_fees(self, node_small_id: int) -> None:
        self._attribute_fee_to_node(node_small_id, 0)
        node = self.nodes.borrow(node_small_id)
        amount = node["available_fee_amount"]
        if amount > 0:
            node["available_fee_amount"] = 0
            self.nodes.put(node_small_id, node)
            self._pay(self.ctx.sender, amount)

    def _eligible(self, task: dict, task_small_id: int, node_id: int, price_cap: int, units: int, price: dict) -> bool:
        if not (price["price_per_one_million_compute_units"] <= price_cap and price["max_num_compute_units"] >= units):
            return False
        node = self.nodes.get(node_id)
        return node is not None and node["was_disabled_in_epoch"] is None

    def _sample_node_for_stack(self, task_small_id: int, task: dict, price_cap: int, units: int) -> int:
        ids: list[int] = task["subscribed_nodes_small_ids"]
        if not ids:
            raise abort("ENoNodesSubscribedToTask")
        eligible: list[int] = []
        i = 0
        while i < len(ids):
            node_id = ids[i]
            price = self.subscribed_nodes.get((task_small_id, node_id))
            if price is None:
                # Lazy cleanup of stale ids (quirk §4.8): swap-remove and look at index i again.
                ids[i] = ids[-1]
                ids.pop()
                continue
            if self._eligible(task, task_small_id, node_id, price_cap, units, price):
                eligible.append(node_id)
            i += 1
        task["subscribed_nodes_small_ids"] = ids
        self.tasks.put(task_small_id, task)
        if not eligible:
            raise abort("ENoNodesEligibleForTask")
        return eligible[self.ctx.random_u64() % len(eligible)]

    def _sample_attestation_nodes(self, task_small_id: int, task: dict, price_cap: int, units: int) -> list[int]:
        eligible: list[int] = []
        for node_id in task["subscribed_nodes_small_ids"]:
            # No stale-id cleanup here: a stale id aborts in the framework (quirk §4.8 b).
            price = self.subscribed_nodes.borrow((task_small_id, node_id))
            if self._eligible(task, task_small_id, node_id, price_cap, units, price):
                eligible.append(node_id)
        count = self.db["cross_validation_extra_nodes_count"]
        if len(eligible) < count:
            return eligible
        # With replacement, the stack's own node included (quirk §14.5).
        return [eligible[self.ctx.random_u64() % len(eligible)] for _ in range(count)]

    def _task_of_stack(self, stack: dict) -> dict:
        return self.tasks.borrow(stack["task_small_id"])

    # ------------------------------------------------------------------ §4.1 nodes
    def register_node_entry(self) -> None:
        if self.db["is_registration_disabled"]:
            raise abort("ENodeRegDisabled")
        small_id = self._next_id("next_node_small_id")
        self.nodes.add(
            small_id,
            {
                "was_disabled_in_epoch": None,
                "collateral": 0,
                "last_fee_epoch": self.epoch,
                "last_fee_epoch_amount": 0,
                "available_fee_amount": 0,
                "reputation_score": REPUTATION_SCORE_START,
                "confidential_compute_last_rotation_counter": None,
                "confidential_compute_last_updated_epoch": None,
                "confidential_compute_public_key_commitment": None,
                "confidential_compute_device_types": [],
            },
        )
        badge_id = self.ctx.create_object("NodeBadge", self.ctx.sender, {"small_id": sid(small_id)})
        self.ctx.emit("NodeRegisteredEvent", {"badge_id": badge_id, "node_small_id": sid(small_id)})

    # ------------------------------------------------------------------ §4.2–4.5 tasks
    def create_task_entry(
        self,
        badge: dict,
        role: int,
        model_name: str | None,
        security_level: int | None,
        minimum_reputation_score: int | None,
        is_public: bool,
    ) -> None:
        level = 0 if security_level is None else security_level
        if not is_valid_task_role(role):
            raise abort("EInvalidTaskRole")
        if not is_valid_security_level(level):
            raise abort("EInvalidSecurityLevel")
        if minimum_reputation_score is not None and minimum_reputation_score > MAX_REPUTATION_SCORE:
            raise abort("EInvalidMinimumReputationScore")
        small_id = self._next_id("next_task_small_id")
        task_id = self.ctx.new_object_id()
        self.tasks.add(
            small_id,
            {
                "task_id": task_id,
                "role": role,
                "model_name": model_name,
                "is_deprecated": False,
                "deprecated_at_epoch": None,
                "security_level": level,
                "subscribed_nodes_small_ids": [],
                "minimum_reputation_score": minimum_reputation_score or 0,
                "is_public": is_public,
                "whitelisted_nodes": [],
            },
        )
        badge_id = self.ctx.create_object("TaskBadge", self.ctx.sender, {"small_id": sid(small_id)})
        self.ctx.emit(
            "TaskRegisteredEvent",
            {
                # The TaskBadge's id, not the Task's (quirk §14.12).
                "task_id": badge_id,
                "task_small_id": sid(small_id),
                "role": {"inner": role},
                "model_name": model_name,
                "security_level": {"inner": level},
                "minimum_reputation_score": minimum_reputation_score,
            },
        )

    def deprecate_task(self, task_badge: dict) -> None:
        small_id = task_badge["small_id"]
        task = self.tasks.get(small_id)
        if task is None:
            raise abort("ETaskNotFound")
        if task["is_deprecated"]:
            raise abort("ETaskAlreadyDeprecated")
        task["is_deprecated"] = True
        task["deprecated_at_epoch"] = self.epoch
        self.tasks.put(small_id, task)
        self.ctx.emit(
            "TaskDeprecationEvent",
            {"task_id": task["task_id"], "task_small_id": sid(small_id), "epoch": str(self.epoch)},
        )

    def _remove_task_checks(self, small_id: int, removable: Callable[[int, int], bool]) -> dict:
        task = self.tasks.get(small_id)
        if task is None:
            raise abort("ETaskNotFound")
        if not task["is_deprecated"]:
            raise abort("ETaskNotDeprecated")
        if not removable(task["deprecated_at_epoch"], self.epoch):
            raise abort("ENotEnoughEpochsPassed")
        return task

    def _remove_task(self, small_id: int) -> None:
        self.tasks.remove(small_id)
        self.subscribed_nodes.remove_prefix(small_id)

    def remove_deprecated_task(self, task_badge: dict) -> None:
        small_id = task_badge["small_id"]
        task = self._remove_task_checks(small_id, task_removable_by_badge)
        self._remove_task(small_id)
        self.ctx.delete_object(task_badge["id"])
        self.ctx.emit(
            "TaskRemovedEvent",
            {"task_id": task["task_id"], "task_small_id": sid(small_id), "removed_at_epoch": str(self.epoch)},
        )

    def remove_deprecated_task_by_admin(self, badge: dict, task_small_id: int) -> None:
        self._remove_task_checks(task_small_id, task_removable_by_admin)
        self._remove_task(task_small_id)  # emits no event (quirk §14.12)

    def whitelist_nodes_for_task(self, badge: dict, task_small_id: int, nodes: list[int]) -> None:
        task = self.tasks.get(task_small_id)
        if task is None:
            raise abort("ETaskNotFound")
        if task["is_public"]:
            raise abort("ETaskIsPublic")
        task["whitelisted_nodes"].extend(nodes)
        self.tasks.put(task_small_id, task)

    # ------------------------------------------------------------------ §4.6–4.8 subscriptions
    def subscribe_node_to_task(self, node_badge: dict, task_small_id: int, price_per_one_million_compute_units: int) -> None:
        node_id = node_badge["small_id"]
        task = self.tasks.get(task_small_id)
        if task is None:
            raise abort("ETaskNotFound")
        node = self.nodes.borrow(node_id)
        if node["reputation_score"] < task["minimum_reputation_score"]:
            raise abort("ENodeDoesNotMeetTaskRequirements")
        if not task["is_public"] and node_id not in task["whitelisted_nodes"]:
            raise abort("ENodeNotWhitelistedForTask")
        if task["is_deprecated"]:
            raise abort("ETaskDeprecated")
        if self.badge_task_fields.contains((node_badge["id"], task_small_id)):
            raise abort("ENodeAlreadySubscribedToTask")
        if price_per_one_million_compute_units == 0:
            raise abort("EInvalidPricePerComputeUnit")
        self.subscribed_nodes.add(
            (task_small_id, node_id),
            {
                "node_id": node_id,
                "price_per_one_million_compute_units": price_per_one_million_compute_units,
                "max_num_compute_units": COMPUTE_UNITS_PER_STACK,
            },
        )
        task["subscribed_nodes_small_ids"].append(node_id)
        self.tasks.put(task_small_id, task)
        self.badge_task_fields.add((node_badge["id"], task_small_id), {"value": True})
        self.ctx.emit(
            "NodeSubscribedToTaskEvent",
            {
                "task_small_id": sid(task_small_id),
                "node_small_id": sid(node_id),
                "price_per_one_million_compute_units": str(price_per_one_million_compute_units),
                "max_num_compute_units": str(COMPUTE_UNITS_PER_STACK),
            },
        )

    def update_node_subscription(self, node_badge: dict, task_small_id: int, price_per_one_million_compute_units: int) -> None:
        node_id = node_badge["small_id"]
        if price_per_one_million_compute_units == 0:
            raise abort("EInvalidPricePerComputeUnit")
        task = self.tasks.get(task_small_id)
        if task is None:
            raise abort("ETaskNotFound")
        if not self.badge_task_fields.contains((node_badge["id"], task_small_id)):
            raise abort("ENodeNotSubscribedToTask")
        if task["is_deprecated"]:
            raise abort("ETaskDeprecated")
        price = self.subscribed_nodes.borrow((task_small_id, node_id))
        price["price_per_one_million_compute_units"] = price_per_one_million_compute_units
        self.subscribed_nodes.put((task_small_id, node_id), price)
        self.ctx.emit(
            "NodeSubscriptionUpdatedEvent",
            {
                "node_small_id": sid(node_id),
                "task_small_id": sid(task_small_id),
                "price_per_one_million_compute_units": str(price_per_one_million_compute_units),
                "max_num_compute_units": str(price["max_num_compute_units"]),
            },
        )

    def unsubscribe_node_from_task(self, node_badge: dict, task_small_id: int) -> None:
        node_id = node_badge["small_id"]
        task = self.tasks.get(task_small_id)
        if task is None:
            raise abort("ETaskNotFound")
        if not self.badge_task_fields.contains((node_badge["id"], task_small_id)):
            raise abort("ENodeNotSubscribedToTask")
        self.badge_task_fields.remove((node_badge["id"], task_small_id))
        if task["is_deprecated"]:
            raise abort("ETaskDeprecated")
        price = self.subscribed_nodes.remove((task_small_id, node_id))
        if price["node_id"] != node_id:
            raise abort("ENodeIndexMismatch")
        # The id stays in subscribed_nodes_small_ids (quirk §4.8): cleaned lazily at the next purchase.
        self.ctx.emit(
            "NodeUnsubscribedFromTaskEvent", {"task_small_id": sid(task_small_id), "node_small_id": sid(node_id)}
        )

    # ------------------------------------------------------------------ §4.9 stacks
    def acquire_new_stack_entry(
        self, wallet: dict, task_small_id: int, num_compute_units: int, price: int, random: Any = None
    ) -> None:
        if num_compute_units == 0:
            raise abort("EInvalidComputeUnits")
        if price == 0:
            raise abort("EInvalidPricePerComputeUnit")
        task = self.tasks.get(task_small_id)
        if task is None:
            raise abort("ETaskNotFound")
        fee_amount = _arith(
            money.stack_payment,
            task["security_level"],
            price,
            num_compute_units,
            self.db["sampling_consensus_charge_permille"],
            self.db["cross_validation_extra_nodes_charge_permille"],
        )
        balance = self.ctx.coin_balance(wallet)
        if balance < fee_amount:
            raise abort("EInsufficientBalance")
        self.ctx.set_coin_balance(wallet, balance - fee_amount)
        self.db["fee_treasury"] = check_u64(self.db["fee_treasury"] + fee_amount)
        selected = self._sample_node_for_stack(task_small_id, task, price, num_compute_units)
        small_id = self._next_id("next_stack_small_id")
        badge_id = self.ctx.create_object("StackBadge", self.ctx.sender, {"small_id": sid(small_id)})
        self.stacks.add(
            small_id,
            {
                "owner": self.ctx.sender,
                "price_per_one_million_compute_units": price,
                "num_compute_units": num_compute_units,
                "selected_node_id": selected,
                "task_small_id": task_small_id,
                "is_claimed": False,
                "stack_id": badge_id,
            },
        )
        self.ctx.emit(
            "StackCreatedEvent",
            {
                "stack_id": badge_id,
                "stack_small_id": sid(small_id),
                "owner": self.ctx.sender,
                "task_small_id": sid(task_small_id),
                "selected_node_id": sid(selected),
                "num_compute_units": str(num_compute_units),
                "price_per_one_million_compute_units": str(price),
            },
        )

    # ------------------------------------------------------------------ §4.10–4.12 settlement
    def try_settle_stack(
        self,
        node_badge: dict,
        stack_small_id: int,
        num_claimed_compute_units: int,
        committed_stack_proof: bytes,
        stack_merkle_leaf: bytes,
        random: Any = None,
    ) -> None:
        node_id = node_badge["small_id"]
        stack = self.stacks.borrow(stack_small_id)
        if stack["selected_node_id"] != node_id:
            raise abort("ENodeNotSelectedForStack")
        if num_claimed_compute_units > stack["num_compute_units"]:
            raise abort("ETooManyComputedUnits")
        if self.tickets.contains(stack_small_id):
            raise abort("EStackInSettlementDispute")
        if len(committed_stack_proof) != BYTES_PER_HASH_COMMITMENT:
            raise abort("EInvalidCommittedStackProof")
        if len(stack_merkle_leaf) != BYTES_PER_HASH_COMMITMENT:
            raise abort("EInvalidStackMerkleLeaf")
        task = self._task_of_stack(stack)
        extra = self.db["cross_validation_extra_nodes_count"]
        if BYTES_PER_HASH_COMMITMENT * (1 + extra) > MAX_MOVE_OBJECT_SIZE:
            # On Sui the draws and the buffer run out of gas or exceed the object size limit.
            raise ExecutionFailure(f"cross_validation_extra_nodes_count {extra} makes the ticket exceed Sui's limits")
        requested: list[int] = []
        if task["security_level"] == SecurityLevel.SAMPLING_CONSENSUS:
            draw = self.ctx.random_u64() % PERMILLE + 1
            if draw <= self.db["cross_validation_probability_permille"]:
                requested = self._sample_attestation_nodes(
                    stack["task_small_id"], task, stack["price_per_one_million_compute_units"], stack["num_compute_units"]
                )
        # Sized by the configured count, not by how many nodes were drawn.
        leaves = stack_merkle_leaf + bytes(BYTES_PER_HASH_COMMITMENT * self.db["cross_validation_extra_nodes_count"])
        self.tickets.add(
            stack_small_id,
            {
                "ticket_id": self.ctx.new_object_id(),
                "selected_node_id": node_id,
                "num_claimed_compute_units": num_claimed_compute_units,
                "requested_attestation_nodes": requested,
                "dispute_settled_at_epoch": dispute_settled_at_epoch(self.epoch),
                "committed_stack_proof": committed_stack_proof.hex(),
                "stack_merkle_leaves_vector": leaves.hex(),
                "already_attested_nodes": [],
                "is_in_dispute": False,
            },
        )
        self.ctx.emit(
            "StackTrySettleEvent",
            {
                "stack_small_id": sid(stack_small_id),
                "selected_node_id": sid(node_id),
                "requested_attestation_nodes": [sid(n) for n in requested],
                "committed_stack_proof": list(committed_stack_proof),
                "stack_merkle_leaf": list(stack_merkle_leaf),
                "num_claimed_compute_units": str(num_claimed_compute_units),
            },
        )

    def submit_stack_settlement_attestation(
        self, node_badge: dict, stack_small_id: int, committed_stack_proof: bytes, stack_merkle_leaf: bytes
    ) -> None:
        node_id = node_badge["small_id"]
        stack = self.stacks.get(stack_small_id)
        if stack is None:
            raise abort("EStackNotFound")
        ticket = self.tickets.get(stack_small_id)
        if ticket is None:
            raise abort("EStackNotInSettlementDispute")
        if len(committed_stack_proof) != BYTES_PER_HASH_COMMITMENT:
            raise abort("EInvalidCommittedStackProof")
        if len(stack_merkle_leaf) != BYTES_PER_HASH_COMMITMENT:
            raise abort("EInvalidStackMerkleLeaf")
        task = self._task_of_stack(stack)
        if task["security_level"] != SecurityLevel.SAMPLING_CONSENSUS:
            raise abort("EStackDoesNotRequireSamplingConsensus")
        if not attestation_window_open(ticket["dispute_settled_at_epoch"], self.epoch):
            raise abort("EStackDisputePeriodOver")
        requested: list[int] = ticket["requested_attestation_nodes"]
        if node_id not in requested:
            raise abort("ENodeNotSelectedForAttestation")
        idx = requested.index(node_id)
        original_proof = bytes.fromhex(ticket["committed_stack_proof"])
        if committed_stack_proof != original_proof:
            self.start_attestation_dispute(node_badge, stack_small_id, committed_stack_proof)
            return
        leaves = bytearray(bytes.fromhex(ticket["stack_merkle_leaves_vector"]))
        start = (idx + 1) * BYTES_PER_HASH_COMMITMENT
        if start + BYTES_PER_HASH_COMMITMENT > len(leaves):
            # Only after the admin lowered cross_validation_extra_nodes_count below the ticket's draw.
            raise MoveAbort("vector", 0x20000, "EINDEX_OUT_OF_BOUNDS")
        leaves[start : start + BYTES_PER_HASH_COMMITMENT] = stack_merkle_leaf
        ticket["stack_merkle_leaves_vector"] = bytes(leaves).hex()
        ticket["already_attested_nodes"].append(node_id)
        self.tickets.put(stack_small_id, ticket)
        attestation_event = {
            "stack_small_id": sid(stack_small_id),
            "attestation_node_id": sid(node_id),
            "committed_stack_proof": list(committed_stack_proof),
            "stack_merkle_leaf": list(stack_merkle_leaf),
        }
        if len(ticket["already_attested_nodes"]) == len(requested):
            if hashlib.blake2b(bytes(leaves), digest_size=32).digest() != committed_stack_proof:
                self.start_attestation_dispute(node_badge, stack_small_id, committed_stack_proof)
                return
            self.ctx.emit("NewStackSettlementAttestationEvent", attestation_event)
            self.ctx.emit(
                "StackSettlementTicketEvent",
                {
                    "stack_small_id": sid(stack_small_id),
                    "selected_node_id": sid(ticket["selected_node_id"]),
                    "num_claimed_compute_units": str(ticket["num_claimed_compute_units"]),
                    "requested_attestation_nodes": [sid(n) for n in requested],
                    # The event carries the current epoch; the stored ticket keeps its own (§4.11 step 9).
                    "dispute_settled_at_epoch": str(self.epoch),
                    "committed_stack_proof": list(committed_stack_proof),
                },
            )
            return
        self.ctx.emit("NewStackSettlementAttestationEvent", attestation_event)

    def start_attestation_dispute(self, node_badge: dict, stack_small_id: int, attestation_commitment: bytes) -> None:
        ticket = self.tickets.borrow(stack_small_id)
        if ticket["is_in_dispute"]:
            raise abort("EStackAlreadyInDispute")
        task = self._task_of_stack(self.stacks.borrow(stack_small_id))
        if task["security_level"] != SecurityLevel.SAMPLING_CONSENSUS:
            raise abort("ETaskSecurityLevelNotSamplingConsensus")
        ticket["is_in_dispute"] = True
        self.tickets.put(stack_small_id, ticket)
        self.ctx.emit(
            "StackAttestationDisputeEvent",
            {
                "stack_small_id": sid(stack_small_id),
                "attestation_commitment": list(attestation_commitment),
                "attestation_node_id": sid(node_badge["small_id"]),
                "original_node_id": sid(ticket["selected_node_id"]),
                "original_commitment": list(bytes.fromhex(ticket["committed_stack_proof"])),
            },
        )

    # ------------------------------------------------------------------ §4.13–4.15 claims and fees
    def claim_funds(self, node_badge: dict, settled_ticket_ids: list[int]) -> None:
        node_id = node_badge["small_id"]
        total_node_fee = 0
        for stack_small_id in settled_ticket_ids:
            ticket = self.tickets.borrow(stack_small_id)
            stack = self.stacks.borrow(stack_small_id)
            task = self._task_of_stack(stack)
            if ticket["selected_node_id"] != node_id:
                raise abort("ENodeNotSelectedForSettlement")
            if ticket["is_in_dispute"]:
                raise abort("EStackInDispute")
            if not claimable(ticket["dispute_settled_at_epoch"], self.epoch):
                raise abort("EStackDisputePeriodIsNotOver")
            if stack["is_claimed"]:
                raise abort("EStackAlreadyClaimed")
            level = task["security_level"]
            price = stack["price_per_one_million_compute_units"]
            scp = self.db["sampling_consensus_charge_permille"]
            claimed = ticket["num_claimed_compute_units"]
            node_fee = _arith(money.stack_fee_amount, level, price, claimed, scp)
            total_node_fee = check_u64(total_node_fee + node_fee)
            user_refund = _arith(money.stack_fee_amount, level, price, stack["num_compute_units"] - claimed, scp)
            for attester in ticket["requested_attestation_nodes"]:
                if attester in ticket["already_attested_nodes"]:
                    credit = _arith(money.attester_credit, node_fee, self.db["cross_validation_extra_nodes_count"])
                    entry = self.nodes.borrow(attester)
                    entry["available_fee_amount"] = check_u64(entry["available_fee_amount"] + credit)
                    self.nodes.put(attester, entry)
                else:
                    self._slash_node_on_timeout(attester)
            if user_refund > 0:
                self._pay(stack["owner"], user_refund)
            self.tickets.remove(stack_small_id)
            self.stacks.remove(stack_small_id)
            self.ctx.emit(
                "StackSettlementTicketClaimedEvent",
                {
                    "stack_small_id": sid(stack_small_id),
                    "selected_node_id": sid(ticket["selected_node_id"]),
                    "attestation_nodes": [sid(n) for n in ticket["requested_attestation_nodes"]],
                    "num_claimed_compute_units": str(claimed),
                    "user_refund_amount": str(user_refund),
                },
            )
        if total_node_fee > 0:
            self._pay(self.ctx.sender, total_node_fee)
        self._withdraw_fees(node_id)

    def _slash_node_on_timeout(self, node_id: int) -> None:
        node = self.nodes.get(node_id)
        if node is None or node["collateral"] == 0:
            return
        amount = _arith(money.slash_on_timeout, node["collateral"], self.db["permille_to_slash_node_on_timeout"])
        amount = min(amount, node["collateral"])
        node["collateral"] -= amount
        self.nodes.put(node_id, node)
        self.db["communal_treasury"] = check_u64(self.db["communal_treasury"] + amount)

    def claim_funds_for_stacks(
        self, node_badge: dict, stack_small_ids: list[int], num_compute_units_per_stack_to_claim: list[int]
    ) -> None:
        node_id = node_badge["small_id"]
        if len(stack_small_ids) != len(num_compute_units_per_stack_to_claim):
            raise abort("EInvalidNumClaimedComputeUnitsPerStack")
        total_node_fee = 0
        for stack_small_id, claimed in zip(stack_small_ids, num_compute_units_per_stack_to_claim):
            stack = self.stacks.borrow(stack_small_id)
            if stack["selected_node_id"] != node_id:
                raise abort("ENodeNotSelectedForClaim")
            if stack["is_claimed"]:
                raise abort("EStackAlreadyClaimed")
            if claimed > stack["num_compute_units"]:
                raise abort("EInvalidNumClaimedComputeUnitsPerStack")
            task = self._task_of_stack(stack)
            if task["security_level"] != SecurityLevel.CONFIDENTIAL_COMPUTE:
                raise abort("ETaskIsNotConfidentialCompute")
            price = stack["price_per_one_million_compute_units"]
            node_fee = _arith(money.confidential_claim_amount, price, claimed)
            total_node_fee = check_u64(total_node_fee + node_fee)
            refund = _arith(money.confidential_claim_amount, price, stack["num_compute_units"] - claimed)
            if refund > 0:
                self._pay(stack["owner"], refund)
            stack["is_claimed"] = True  # the stack is kept (quirk §14.13)
            self.stacks.put(stack_small_id, stack)
            self.ctx.emit(
                "ClaimedStackEvent",
                {
                    "stack_small_id": sid(stack_small_id),
                    "selected_node_id": sid(node_id),
                    "num_claimed_compute_units": str(claimed),
                    "user_refund_amount": str(refund),
                },
            )
        if total_node_fee > 0:
            self._pay(self.ctx.sender, total_node_fee)
        self._withdraw_fees(node_id)

    def withdraw_fees(self, node_badge: dict) -> None:
        self._withdraw_fees(node_badge["small_id"])

    # ------------------------------------------------------------------ §4.16 node lifecycle
    def permanently_disable_node(self, node_badge: dict) -> None:
        node_id = node_badge["small_id"]
        node = self.nodes.borrow(node_id)
        if node["was_disabled_in_epoch"] is not None:
            raise abort("ENodeAlreadyDisabled")
        node["was_disabled_in_epoch"] = self.epoch
        self.nodes.put(node_id, node)

    def destroy_disabled_node(self, node_badge: dict) -> None:
        node_id = node_badge["small_id"]
        self._withdraw_fees(node_id)
        node = self.nodes.remove(node_id)
        if node["was_disabled_in_epoch"] is None:
            raise MoveAbort("option", 0x40001, "EOPTION_NOT_SET")
        if not node_destroyable(node["was_disabled_in_epoch"], self.epoch):
            raise abort("ENodeMustWaitBeforeDestroy")
        self.ctx.create_coin(self.ctx.sender, node["collateral"])
        self.ctx.delete_object(node_badge["id"])

    # ------------------------------------------------------------------ §4.18 admin setters
    def _set(self, field: str, value: int) -> None:
        self.db[field] = value

    def set_cross_validation_probability_permille(self, badge: dict, value: int) -> None:
        self._set("cross_validation_probability_permille", value)

    def set_cross_validation_extra_nodes_count(self, badge: dict, value: int) -> None:
        self._set("cross_validation_extra_nodes_count", value)

    def set_sampling_consensus_charge_permille(self, badge: dict, value: int) -> None:
        self._set("sampling_consensus_charge_permille", value)

    def set_cross_validation_extra_nodes_charge_permille(self, badge: dict, value: int) -> None:
        self._set("cross_validation_extra_nodes_charge_permille", value)

    def set_permille_to_slash_node_on_timeout(self, badge: dict, value: int) -> None:
        if value > PERMILLE:
            raise abort("ETotalPermilleMustBeLessThan1000")
        self._set("permille_to_slash_node_on_timeout", value)

    def set_permille_for_oracle_on_dispute(self, badge: dict, value: int) -> None:
        if value + self.db["permille_for_honest_nodes_on_dispute"] > PERMILLE:
            raise abort("ETotalPermilleMustBeLessThan1000")
        self._set("permille_for_oracle_on_dispute", value)

    def set_permille_for_honest_nodes_on_dispute(self, badge: dict, value: int) -> None:
        if self.db["permille_for_oracle_on_dispute"] + value > PERMILLE:
            raise abort("ETotalPermilleMustBeLessThan1000")
        self._set("permille_for_honest_nodes_on_dispute", value)

    def set_required_registration_toma_collateral(self, badge: dict, value: int) -> None:
        self._set("registration_collateral_in_protocol_token", value)

    def disable_registration(self, badge: dict) -> None:
        self._set("is_registration_disabled", True)

    def enable_registration(self, badge: dict) -> None:
        self._set("is_registration_disabled", False)
