"""A stack's life up to its claim window, through the Chain port alone: the part of the conformance suite that a
real Sui network can run (docs/sui.md, "Running the conformance suite against a real network").

``real_net`` (tests/chain/conftest.py) runs it on the localnet in process, on pysui → loopback node → localnet and,
when every ``ATOMA_OPS_SUI_*`` setting is present, on that network (``sui-network``). A real network has no faucet
hook, no epoch control and no scripted randomness, so the scenario needs none: one sender registers a node and a
private task, whitelists and subscribes its node, buys a stack (its node is the only one eligible), settles it, and
is refused the claim inside the dispute window. Every refusal along the way is checked by abort name, code and
function, with nothing of the sender's changed. It ends by deprecating the task and disabling the node, so a run
leaves nothing that others could subscribe to or be sold.
"""

from __future__ import annotations

import hashlib

from tests.chain.chainkit import sid

ASK = 1_000  # USDC base units per one million compute units
UNITS = 1_000  # so a stack costs floor(1_000 × 1_000 / 10^6) = 1 base unit (0.000001 USDC)
COST = UNITS * ASK // 1_000_000
CLAIMED = 400
MISSING = 2**64 - 1  # a small id no task will ever have
PROOF = hashlib.blake2b(b"atoma-ops conformance proof", digest_size=32).digest()
LEAF = hashlib.blake2b(b"atoma-ops conformance leaf", digest_size=32).digest()


def small_id(result, event: str, field: str) -> int:
    return int(result.event(event).parsed_json[field]["inner"])


def test_stack_life_until_the_claim_window(real_net):
    n = real_net
    me = n.sender

    # A node and a private task of our own, so that nobody else's node can be drawn for the stack.
    r = n.call("register_node_entry")
    node = small_id(r, "NodeRegisteredEvent", "node_small_id")
    assert n.read("get_node", node).was_disabled_in_epoch is None
    n.fails("EInvalidTaskRole", "create_task_entry", role=8)
    n.fails("EInvalidMinimumReputationScore", "create_task_entry", role=0, minimum_reputation_score=101)
    r = n.call("create_task_entry", role=0, model_name="atoma-ops/conformance", security_level=0, is_public=False)
    task = small_id(r, "TaskRegisteredEvent", "task_small_id")
    assert (n.read("get_task", task).is_public, n.read("get_task", task).model_name) == (False, "atoma-ops/conformance")

    # Subscription: refused until whitelisted, then accepted once.
    sub = {"task_small_id": task, "price_per_one_million_compute_units": ASK, "node_small_id": node}
    n.fails("ENodeNotWhitelistedForTask", "subscribe_node_to_task", **sub)
    n.fails("ETaskNotFound", "subscribe_node_to_task", **{**sub, "task_small_id": MISSING})
    r = n.call("whitelist_nodes_for_task", task_small_id=task, nodes=[node])
    assert r.events == [] and n.read("get_task", task).whitelisted_nodes == [node]
    r = n.call("subscribe_node_to_task", **sub)
    assert r.event("NodeSubscribedToTaskEvent").parsed_json == {
        "task_small_id": sid(task), "node_small_id": sid(node), "price_per_one_million_compute_units": str(ASK),
        "max_num_compute_units": "1000000",
    }
    n.fails("ENodeAlreadySubscribedToTask", "subscribe_node_to_task", **sub)
    assert [(s.node_small_id, s.price_per_one_million_compute_units) for s in n.read("subscriptions", task)] == [
        (node, ASK)]

    # A stack: refused for bad units and a bid below the ask, then bought from our node.
    buy = {"task_small_id": task, "num_compute_units": UNITS, "price": ASK}
    n.fails("EInvalidComputeUnits", "acquire_new_stack_entry", **{**buy, "num_compute_units": 0})
    n.fails("ENoNodesEligibleForTask", "acquire_new_stack_entry", **{**buy, "price": ASK - 1})
    balance = n.read("usdc_balance", me)
    assert balance >= COST, f"{me} holds {balance} USDC base units; the scenario needs {COST}"
    r = n.call("acquire_new_stack_entry", **buy)
    stack = small_id(r, "StackCreatedEvent", "stack_small_id")
    created = r.event("StackCreatedEvent").parsed_json
    assert (created["owner"], created["selected_node_id"], created["num_compute_units"]) == (me, sid(node), str(UNITS))
    assert r.balance_changes == {me: -COST}
    assert n.read("usdc_balance", me) == balance - COST
    s = n.read("get_stack", stack)
    assert (s.owner, s.task_small_id, s.selected_node_id, s.is_claimed) == (me, task, node, False)

    # Settlement, then the claim is refused inside the dispute window.
    settle = {"stack_small_id": stack, "num_claimed_compute_units": CLAIMED, "committed_stack_proof": PROOF,
              "stack_merkle_leaf": LEAF, "node_small_id": node}
    n.fails("ETooManyComputedUnits", "try_settle_stack", **{**settle, "num_claimed_compute_units": UNITS + 1})
    n.fails("EInvalidCommittedStackProof", "try_settle_stack", **{**settle, "committed_stack_proof": PROOF[:31]})
    r = n.call("try_settle_stack", **settle)
    assert r.event("StackTrySettleEvent").parsed_json["num_claimed_compute_units"] == str(CLAIMED)
    ticket = n.read("get_ticket", stack)
    assert (ticket.selected_node_id, ticket.num_claimed_compute_units) == (node, CLAIMED)
    assert ticket.dispute_settled_at_epoch == r.epoch + 1
    assert n.read("current_epoch") < ticket.dispute_settled_at_epoch, "the epoch turned during the scenario"
    n.fails("EStackDisputePeriodIsNotOver", "claim_funds", settled_ticket_ids=[stack], node_small_id=node)
    n.fails("EStackInSettlementDispute", "try_settle_stack", **settle)
    assert n.read("get_stack", stack).is_claimed is False and n.read("get_ticket", stack) == ticket

    # Leave nothing behind that others could use: the task deprecated, the node disabled.
    r = n.call("deprecate_task", task_small_id=task)
    assert r.event("TaskDeprecationEvent").parsed_json["task_small_id"] == sid(task)
    n.fails("ETaskAlreadyDeprecated", "deprecate_task", task_small_id=task)
    n.call("permanently_disable_node", node_small_id=node)
    assert n.read("get_node", node).was_disabled_in_epoch is not None
    n.fails("ENodeAlreadyDisabled", "permanently_disable_node", node_small_id=node)
