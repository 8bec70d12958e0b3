"""Entry functions §4.9, §4.10, §4.13–§4.16: stacks, settlement tickets, claims, fees and the node lifecycle."""

from __future__ import annotations

import pytest

from tests.chain.chainkit import (
    CONFIDENTIAL,
    L32,
    NO_SECURITY,
    P32,
    SAMPLING,
    InvalidArgument,
    MoveArithmeticError,
    sid,
)

DF_MISSING = ("dynamic_field", 1)
U64_MAX = 2**64 - 1


def market(net, level=NO_SECURITY, nodes=("node-1",), price=1_000, user_usdc=10_000_000):
    """A task with ``nodes`` subscribed at ``price`` and a funded user; returns the task id."""
    net.mint("user", user_usdc)
    t = net.task(level)
    for alias in nodes:
        net.node(alias)
        net.sub(alias, t, price)
    return t


# ====================================================================== §4.9 acquire_new_stack_entry
def test_acquire_happy_path(net):
    t = market(net, nodes=("node-1", "node-2", "node-3"), price=500)
    net.draws.push(4)  # eligible [1, 2, 3] ⇒ 4 % 3 = 1 ⇒ node 2
    r = net.acquire_new_stack_entry("user", task_small_id=t, num_compute_units=400_000, price=2_000_000)
    assert net.draws.count == 1  # exactly one draw per purchase (§5)
    assert net.names(r) == ["StackCreatedEvent"]
    badge = net.badge("user", "StackBadge")
    assert net.events(r)[0] == {
        "stack_id": badge.object_id,  # the StackBadge's id
        "stack_small_id": sid(1),
        "owner": net.addr["user"],
        "task_small_id": sid(t),
        "selected_node_id": sid(2),
        "num_compute_units": "400000",
        "price_per_one_million_compute_units": "2000000",
    }
    assert badge.small_id == 1
    stack = net.get_stack(1)
    assert (stack.owner, stack.price_per_one_million_compute_units, stack.num_compute_units) == (net.addr["user"], 2_000_000, 400_000)
    assert (stack.selected_node_id, stack.task_small_id, stack.is_claimed) == (2, t, False)
    # pays floor(2e6 × 4e5 / 1e6) = 800_000 into the fee treasury
    assert r.balance_changes == {net.addr["user"]: -800_000}
    assert net.usdc("user") == 10_000_000 - 800_000
    assert net.treasury() == 800_000
    assert net.cfg().next_stack_small_id == 2
    net.conserved()


@pytest.mark.parametrize("draw, node", [(0, 1), (1, 2), (2, 3), (3, 1), (2**64 - 1, 1), (2**64 - 2, 3)])
def test_acquire_picks_eligible_by_draw_modulo(net, draw, node):
    t = market(net, nodes=("node-1", "node-2", "node-3"))
    s = net.buy(t, 10, 1_000, draw=draw)
    assert net.get_stack(s).selected_node_id == node


def test_acquire_eligibility_filters(net):
    """Only nodes with ask <= bid, capacity >= units, not disabled are drawn from; eligible list keeps list order."""
    net.mint("user", 10_000_000)
    t = net.task()
    for alias, price in (("node-1", 100), ("node-2", 900), ("node-3", 300)):
        net.node(alias)
        net.sub(alias, t, price)
    net.permanently_disable_node("node-3")
    # bid 500: eligible [1] (2 asks too much, 3 disabled)
    assert net.get_stack(net.buy(t, 10, 500, draw=1)).selected_node_id == 1
    # bid 900: eligible [1, 2]
    assert net.get_stack(net.buy(t, 10, 900, draw=1)).selected_node_id == 2
    net.fails("ENoNodesEligibleForTask", "buy", t, 10, 99)


def test_acquire_coin_keeps_remainder_even_at_zero(net):
    t = market(net, user_usdc=1_000_000)
    coin = net.ln.usdc_coins(net.addr["user"])[0].object_id
    net.buy(t, 1_000_000, 1_000_000)
    [left] = net.ln.usdc_coins(net.addr["user"])
    assert (left.object_id, left.balance) == (coin, 0)
    net.conserved()


def test_acquire_merges_all_coins(net):
    t = market(net, user_usdc=600_000)
    net.mint("user", 500_000)
    r = net.acquire_new_stack_entry("user", task_small_id=t, num_compute_units=1_000_000, price=1_000_000)
    assert r.balance_changes == {net.addr["user"]: -1_000_000}
    [coin] = net.ln.usdc_coins(net.addr["user"])
    assert coin.balance == 100_000


def test_acquire_free_tiny_stack(net):
    """§6 ex. 2/3: price × units below one million costs nothing; the stack still exists."""
    t = market(net, price=1, user_usdc=1)
    s = net.buy(t, 100, 1_000)
    s2 = net.buy(t, 333_333, 3)
    assert net.usdc("user") == 1 and net.treasury() == 0
    assert net.get_stack(s).num_compute_units == 100 and net.get_stack(s2).num_compute_units == 333_333


def test_acquire_aborts_each(net):
    t = market(net, user_usdc=999_999)
    empty = net.task()
    net.fails("EInvalidComputeUnits", "buy", t, 0, 1_000)
    net.fails("EInvalidPricePerComputeUnit", "buy", t, 10, 0)
    net.fails("ETaskNotFound", "buy", 404, 10, 1_000)
    net.fails("EInsufficientBalance", "buy", t, 1_000_000, 1_000_000)  # needs 1_000_000, has 999_999
    net.fails("ENoNodesSubscribedToTask", "buy", empty, 10, 1_000)
    net.fails("ENoNodesEligibleForTask", "buy", t, 10, 999)  # bid below the ask
    net.fails("ENoNodesEligibleForTask", "buy", t, 1_000_001, 1_000)  # beyond the fixed 1M capacity
    net.buy(t, 999_999, 1_000_000)  # exactly affordable
    assert net.usdc("user") == 0


def test_acquire_check_order(net):
    t = market(net, user_usdc=5)
    empty = net.task()
    net.fails("EInvalidComputeUnits", "buy", 404, 0, 0)  # units before price before task
    net.fails("EInvalidPricePerComputeUnit", "buy", 404, 1, 0)
    net.fails("ETaskNotFound", "buy", 404, 1_000_000, 1_000_000)
    # payment comes before node selection
    net.fails("EInsufficientBalance", "buy", empty, 1_000_000, 1_000_000)
    net.fails("EInsufficientBalance", "buy", t, 1_000_001, 1_000_000)
    # overflow in the payment also precedes node selection
    net.fails(MoveArithmeticError, "buy", empty, 2, 2**63)


def test_acquire_without_coins_is_refused_before_signing(net):
    t = market(net, user_usdc=1)
    net.fails(InvalidArgument, "buy", t, 10, 1_000, sender="node-2")


@pytest.mark.parametrize(
    "units, price",
    [(2, 2**63), (2**32, 2**32), (3, U64_MAX // 3 + 1), (1_000_000, U64_MAX)],
)
def test_acquire_u64_overflow_is_an_arithmetic_error(net, units, price):
    t = market(net)
    net.fails(MoveArithmeticError, "buy", t, units, price)


def test_acquire_largest_product_that_fits_is_not_an_overflow(net):
    t = market(net)
    # 3 × (2^64-1)/3 = 2^64 - 1 fits: the call reaches the balance check
    net.fails("EInsufficientBalance", "buy", t, 3, U64_MAX // 3)


def test_acquire_sampling_consensus_pays_121_2_percent(net):
    t = market(net, SAMPLING)
    r = net.acquire_new_stack_entry("user", task_small_id=t, num_compute_units=1_000_000, price=1_000_000)
    assert r.balance_changes == {net.addr["user"]: -1_212_000}
    assert net.treasury() == 1_212_000
    net.set("set_sampling_consensus_charge_permille", 1000)
    net.set("set_cross_validation_extra_nodes_charge_permille", 0)
    r = net.acquire_new_stack_entry("user", task_small_id=t, num_compute_units=1_000_000, price=1_000_000)
    assert r.balance_changes == {net.addr["user"]: -1_000_000}


# ====================================================================== §4.10 try_settle_stack
def test_try_settle_happy_path(net):
    t = market(net)
    s = net.buy(t, 1_000_000, 1_000)
    net.epoch(5)
    count = net.draws.count
    r = net.settle("node-1", s, 400_000)
    assert net.draws.count == count  # no randomness for a NoSecurity task
    assert net.names(r) == ["StackTrySettleEvent"]
    assert net.events(r)[0] == {
        "stack_small_id": sid(s),
        "selected_node_id": sid(1),
        "requested_attestation_nodes": [],
        "committed_stack_proof": list(P32),
        "stack_merkle_leaf": list(L32),
        "num_claimed_compute_units": "400000",
    }
    tk = net.get_ticket(s)
    assert (tk.selected_node_id, tk.num_claimed_compute_units, tk.requested_attestation_nodes) == (1, 400_000, [])
    assert tk.dispute_settled_at_epoch == 6  # E + 1
    assert tk.committed_stack_proof == P32
    assert tk.stack_merkle_leaves_vector == L32 + bytes(32)  # 32 × (1 + extra nodes count)
    assert (tk.already_attested_nodes, tk.is_in_dispute) == ([], False)
    assert net.get_stack(s).is_claimed is False


def test_try_settle_claimed_boundaries(net):
    t = market(net)
    s1, s2 = net.buy(t, 500, 1_000), net.buy(t, 500, 1_000)
    net.settle("node-1", s1, 500)  # == units is allowed
    net.settle("node-1", s2, 0)  # zero is allowed
    assert net.get_ticket(s2).num_claimed_compute_units == 0


def test_try_settle_leaves_buffer_sized_by_configured_count(net):
    t = market(net)
    net.set("set_cross_validation_extra_nodes_count", 3)
    s = net.buy(t, 10, 1_000)
    net.settle("node-1", s, 1)
    assert net.get_ticket(s).stack_merkle_leaves_vector == L32 + bytes(96)


def test_try_settle_aborts_each(net):
    t = market(net, nodes=("node-1", "node-2"))
    s = net.buy(t, 1_000, 1_000, draw=0)  # node 1
    net.fails(DF_MISSING, "settle", "node-1", 99, 1)  # missing stack: framework abort, not EStackNotFound
    net.fails("ENodeNotSelectedForStack", "settle", "node-2", s, 1)
    net.fails("ETooManyComputedUnits", "settle", "node-1", s, 1_001)
    net.fails("EInvalidCommittedStackProof", "settle", "node-1", s, 1, proof=P32[:31])
    net.fails("EInvalidCommittedStackProof", "settle", "node-1", s, 1, proof=P32 + b"\0")
    net.fails("EInvalidCommittedStackProof", "settle", "node-1", s, 1, proof=b"")
    net.fails("EInvalidStackMerkleLeaf", "settle", "node-1", s, 1, leaf=L32[:31])
    net.fails("EInvalidStackMerkleLeaf", "settle", "node-1", s, 1, leaf=L32 + b"\0")
    net.settle("node-1", s, 1)
    net.fails("EStackInSettlementDispute", "settle", "node-1", s, 1)


def test_try_settle_check_order(net):
    t = market(net, nodes=("node-1", "node-2"))
    s = net.buy(t, 1_000, 1_000, draw=0)
    bad = P32[:5]
    net.fails("ENodeNotSelectedForStack", "settle", "node-2", s, 5_000, proof=bad, leaf=bad)
    net.fails("ETooManyComputedUnits", "settle", "node-1", s, 5_000, proof=bad, leaf=bad)
    net.fails("EInvalidCommittedStackProof", "settle", "node-1", s, 5, proof=bad, leaf=bad)
    net.settle("node-1", s, 5)
    net.fails("ETooManyComputedUnits", "settle", "node-1", s, 5_000)  # before the existing-ticket check
    net.fails("EStackInSettlementDispute", "settle", "node-1", s, 5, proof=bad, leaf=bad)  # before lengths


def test_try_settle_by_a_disabled_node(net):
    """Disabled nodes keep settling and claiming their existing stacks (§4.16)."""
    t = market(net)
    s = net.buy(t, 1_000_000, 1_000)
    net.permanently_disable_node("node-1")
    net.settle("node-1", s, 1_000_000)
    net.epoch()
    r = net.claim("node-1", s)
    assert r.balance_changes == {net.addr["node-1"]: 1_000}


def test_try_settle_on_a_removed_task_hits_the_framework(net):
    t = market(net)
    s = net.buy(t, 10, 1_000)
    net.deprecate_task("admin", task_small_id=t)
    net.epoch(1)
    net.remove_deprecated_task("admin", task_small_id=t)
    net.fails(DF_MISSING, "settle", "node-1", s, 1)


# ====================================================================== §4.13 claim_funds
def test_claim_funds_happy_path(net):
    """§6 ex. 1: 1 USDC stack, claim 400_000 ⇒ node 400_000, owner refunded 600_000; stack and ticket deleted."""
    t = market(net, price=1_000_000, user_usdc=1_000_000)
    s = net.buy(t, 1_000_000, 1_000_000)
    net.settle("node-1", s, 400_000)
    net.epoch()
    r = net.claim("node-1", s)
    assert net.names(r) == ["StackSettlementTicketClaimedEvent"]
    assert net.events(r)[0] == {
        "stack_small_id": sid(s),
        "selected_node_id": sid(1),
        "attestation_nodes": [],
        "num_claimed_compute_units": "400000",
        "user_refund_amount": "600000",
    }
    assert r.balance_changes == {net.addr["user"]: 600_000, net.addr["node-1"]: 400_000}
    assert (net.usdc("user"), net.usdc("node-1"), net.treasury()) == (600_000, 400_000, 0)
    assert net.get_stack(s) is None and net.get_ticket(s) is None
    assert net.badge("user", "StackBadge")  # the informational badge stays with the buyer
    net.conserved()


def test_claim_funds_batch_pays_the_node_once(net):
    t = market(net, price=1_000_000, user_usdc=3_000_000)
    stacks = [net.buy(t, 1_000_000, 1_000_000) for _ in range(3)]
    for s, claimed in zip(stacks, (100_000, 1_000_000, 0)):
        net.settle("node-1", s, claimed)
    net.epoch()
    r = net.claim("node-1", *stacks)
    assert [e["user_refund_amount"] for e in net.events(r)] == ["900000", "0", "1000000"]
    node_coins = [c for c in r.object_changes if c.change == "created" and c.owner == net.addr["node-1"]]
    assert len(node_coins) == 1  # the summed node fee is one coin
    assert (net.usdc("node-1"), net.usdc("user"), net.treasury()) == (1_100_000, 1_900_000, 0)


def test_claim_funds_with_nothing_to_pay_creates_no_coins(net):
    t = market(net)
    s = net.buy(t, 100, 1_000)  # free
    net.settle("node-1", s, 50)
    net.epoch()
    r = net.claim("node-1", s)
    assert not [c for c in r.object_changes if c.change == "created"]
    assert net.events(r)[0]["user_refund_amount"] == "0"


def test_claim_funds_empty_list_just_withdraws(net):
    net.node("node-1")
    r = net.claim("node-1")
    assert r.events == [] and r.balance_changes == {}


def test_claim_funds_aborts_each(net):
    t = market(net, nodes=("node-1", "node-2"), price=1_000_000)
    s = net.buy(t, 1_000, 1_000_000, draw=0)
    no_ticket = net.buy(t, 1_000, 1_000_000, draw=0)
    net.fails(DF_MISSING, "claim", "node-1", 99)  # missing ticket and stack
    net.fails(DF_MISSING, "claim", "node-1", no_ticket)  # stack without ticket
    net.settle("node-1", s, 10)
    net.fails("ENodeNotSelectedForSettlement", "claim", "node-2", s)
    net.fails("EStackDisputePeriodIsNotOver", "claim", "node-1", s)  # epoch E
    net.epoch()
    net.fails(DF_MISSING, "claim", "node-1", s, s)  # duplicate id: the second lookup finds nothing
    net.fails(DF_MISSING, "claim", "node-1", s, no_ticket)  # batch is atomic: the first claim is undone
    net.claim("node-1", s)
    net.fails(DF_MISSING, "claim", "node-1", s)  # gone after the claim


def test_claim_funds_check_order(net):
    """ticket/stack/task lookups, then node, dispute, epoch, is_claimed."""
    net.mint("user", 10_000_000)
    cc = net.task(CONFIDENTIAL)
    sc = net.task(SAMPLING)
    for alias in ("node-1", "node-2"):
        net.node(alias)
        net.sub(alias, cc, 1_000)
        net.sub(alias, sc, 1_000)
    # a disputed SamplingConsensus ticket of node 1, checked at its own epoch E
    disputed = net.buy(sc, 1_000, 1_000, draw=0)
    net.settle("node-1", disputed, 10)
    net.start_attestation_dispute("node-2", stack_small_id=disputed, attestation_commitment=P32)
    net.fails("ENodeNotSelectedForSettlement", "claim", "node-2", disputed)  # node before dispute
    net.fails("EStackInDispute", "claim", "node-1", disputed)  # dispute before epoch
    # a confidential stack already paid via claim_funds_for_stacks, then given a ticket (quirk §14.3)
    paid = net.buy(cc, 1_000, 1_000, draw=0)
    net.claim_cc("node-1", [paid], [10])
    net.settle("node-1", paid, 10)
    net.fails("EStackDisputePeriodIsNotOver", "claim", "node-1", paid)  # epoch before is_claimed
    net.epoch()
    net.fails("EStackAlreadyClaimed", "claim", "node-1", paid)
    # the task is looked up before any check on the caller
    net.deprecate_task("admin", task_small_id=cc)
    other = net.buy(cc, 1_000, 1_000, draw=0)
    net.settle("node-1", other, 1)
    net.epoch(2)
    net.remove_deprecated_task_by_admin("admin", task_small_id=cc)
    net.fails(DF_MISSING, "claim", "node-2", other)


def test_claim_funds_sampling_consensus_overflow(net):
    """units × price fits but × 1200 does not: ArithmeticError at claim (§6 ex. 5)."""
    t = market(net, SAMPLING, price=20_000_000_000, user_usdc=24_240_000_000)
    s = net.buy(t, 1_000_000, 20_000_000_000)
    assert net.usdc("user") == 0
    net.settle("node-1", s, 1_000_000)
    net.epoch()
    net.fails(MoveArithmeticError, "claim", "node-1", s)


# ====================================================================== §4.14 claim_funds_for_stacks
def test_claim_funds_for_stacks_happy_path(net):
    t = market(net, CONFIDENTIAL, price=1_000_000, user_usdc=2_000_000)
    s1 = net.buy(t, 1_000_000, 1_000_000)
    s2 = net.buy(t, 500_000, 1_000_000)
    r = net.claim_cc("node-1", [s1, s2], [400_000, 500_000])  # same epoch: no epoch checks
    assert net.names(r) == ["ClaimedStackEvent", "ClaimedStackEvent"]
    assert net.events(r) == [
        {"stack_small_id": sid(s1), "selected_node_id": sid(1), "num_claimed_compute_units": "400000",
         "user_refund_amount": "600000"},
        {"stack_small_id": sid(s2), "selected_node_id": sid(1), "num_claimed_compute_units": "500000",
         "user_refund_amount": "0"},
    ]
    assert r.balance_changes == {net.addr["user"]: 600_000, net.addr["node-1"]: 900_000}
    assert net.get_stack(s1).is_claimed and net.get_stack(s2).is_claimed  # stacks kept (quirk §14.13)
    assert net.treasury() == 0
    net.conserved()


def test_claim_funds_for_stacks_aborts_each(net):
    net.mint("user", 10_000_000)
    cc, no = net.task(CONFIDENTIAL), net.task(NO_SECURITY)
    for alias in ("node-1", "node-2"):
        net.node(alias)
        net.sub(alias, cc, 1)
        net.sub(alias, no, 1)
    s = net.buy(cc, 100, 1, draw=0)
    plain = net.buy(no, 100, 1, draw=0)
    net.fails("EInvalidNumClaimedComputeUnitsPerStack", "claim_cc", "node-1", [s], [])
    net.fails("EInvalidNumClaimedComputeUnitsPerStack", "claim_cc", "node-1", [], [1])
    net.fails(DF_MISSING, "claim_cc", "node-1", [77], [1])
    net.fails("ENodeNotSelectedForClaim", "claim_cc", "node-2", [s], [1])
    net.fails("EInvalidNumClaimedComputeUnitsPerStack", "claim_cc", "node-1", [s], [101])
    net.fails("ETaskIsNotConfidentialCompute", "claim_cc", "node-1", [plain], [1])
    net.fails("EStackAlreadyClaimed", "claim_cc", "node-1", [s, s], [1, 1])  # duplicate in one batch
    net.claim_cc("node-1", [s], [100])
    net.fails("EStackAlreadyClaimed", "claim_cc", "node-1", [s], [1])


def test_claim_funds_for_stacks_check_order(net):
    net.mint("user", 10_000_000)
    cc, no = net.task(CONFIDENTIAL), net.task(NO_SECURITY)
    for alias in ("node-1", "node-2"):
        net.node(alias)
        net.sub(alias, cc, 1)
        net.sub(alias, no, 1)
    s = net.buy(cc, 100, 1, draw=0)
    plain = net.buy(no, 100, 1, draw=0)
    net.fails("EInvalidNumClaimedComputeUnitsPerStack", "claim_cc", "node-1", [77, s], [1])  # lengths first
    net.fails("ENodeNotSelectedForClaim", "claim_cc", "node-2", [plain], [1_000])  # node before units/level
    net.fails("EInvalidNumClaimedComputeUnitsPerStack", "claim_cc", "node-1", [plain], [1_000])  # units before level
    net.claim_cc("node-1", [s], [1])
    net.fails("EStackAlreadyClaimed", "claim_cc", "node-1", [s], [1_000])  # claimed before units
    net.fails("EInvalidNumClaimedComputeUnitsPerStack", "claim_cc", "node-1", [s], [1, 2])


# ====================================================================== §4.15 withdraw_fees
def test_withdraw_fees_with_nothing_available(net):
    net.node("node-1")
    net.epoch(3)
    r = net.withdraw_fees("node-1")
    assert r.events == [] and r.balance_changes == {}
    assert not [c for c in r.object_changes if c.change == "created"]
    node = net.get_node(1)
    # attribute_fee_to_node(0) after an epoch change rolls the fee epoch forward
    assert (node.last_fee_epoch, node.last_fee_epoch_amount, node.available_fee_amount) == (3, 0, 0)


# ====================================================================== §4.16 node lifecycle
def test_permanently_disable_node(net):
    t = market(net)
    net.epoch(2)
    r = net.permanently_disable_node("node-1")
    assert r.events == []
    assert net.get_node(1).was_disabled_in_epoch == 2
    net.fails("ENodeAlreadyDisabled", "permanently_disable_node", "node-1")
    assert [s.node_small_id for s in net.subscriptions(t)] == [1]  # subscriptions kept
    net.fails("ENoNodesEligibleForTask", "buy", t, 10, 1_000)  # never sampled


def test_destroy_disabled_node(net):
    net.node("node-1")
    badge = net.badge("node-1", "NodeBadge").object_id
    net.fails(("option", 0x40001), "destroy_disabled_node", "node-1")  # never disabled: EOPTION_NOT_SET
    net.epoch(1)
    net.permanently_disable_node("node-1")  # disabled in epoch 1
    for _ in range(3):
        net.epoch()
        net.fails("ENodeMustWaitBeforeDestroy", "destroy_disabled_node", "node-1")  # epochs 2, 3, 4
    net.epoch()  # epoch 5 = 1 + 4
    r = net.destroy_disabled_node("node-1")
    assert r.events == []
    assert net.get_node(1) is None
    assert net.ln.get_object(badge) is None
    coins = [c for c in r.object_changes if c.change == "created" and c.owner == net.addr["node-1"]]
    assert len(coins) == 1 and net.usdc("node-1") == 0  # the (zero) collateral comes back as a coin
    assert net.cfg().next_node_small_id == 2  # ids are not reused
    assert net.node("node-2") == 2
    net.fails(InvalidArgument, "destroy_disabled_node", "node-1")  # the badge is gone
    net.conserved()


def test_destroyed_node_in_a_subscription_list_is_skipped(net):
    t = market(net, nodes=("node-1", "node-2"))
    net.permanently_disable_node("node-1")
    net.epoch(4)
    net.destroy_disabled_node("node-1")
    assert net.get_stack(net.buy(t, 10, 1_000, draw=0)).selected_node_id == 2



def test_try_settle_with_an_absurd_extra_nodes_count_fails_cleanly(net):
    """A leaves buffer past Sui's largest object (250 KiB) is an execution failure, never a Python MemoryError."""
    from atoma_ops.chain.errors import ExecutionFailure

    task = net.task()
    net.node("node-1")
    net.sub("node-1", task)
    net.mint("user", 1_000_000)
    stack = net.buy(task, units=1_000, price=1_000)
    # 250 * 1024 / 32 = 8000 slots: leaf 0 plus 7999 extra nodes is the largest ticket that fits.
    net.set("set_cross_validation_extra_nodes_count", 8000)
    net.fails(ExecutionFailure, "settle", "node-1", stack, 1)
    net.set("set_cross_validation_extra_nodes_count", 2**40)
    net.fails(ExecutionFailure, "settle", "node-1", stack, 1)
    net.set("set_cross_validation_extra_nodes_count", 7999)
    r = net.settle("node-1", stack, 1)
    assert len(net.ln.get_ticket(stack).stack_merkle_leaves_vector) == 32 * 8000
    assert net.names(r) == ["StackTrySettleEvent"]
