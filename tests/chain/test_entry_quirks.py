"""Every quirk of atoma-protocol.md §14, shown to be reproduced by the localnet.

Covered elsewhere too: §14.7 (historical proof formula) and §14.8 (terminal disputes, any badge may dispute) in
test_entry_attestation.py; §14.10 (payouts beyond the treasury) in test_entry_money.py.
"""

from __future__ import annotations

from tests.chain.chainkit import CONFIDENTIAL, NO_SECURITY, SAMPLING, P32, h, honest_commitment, sid

DF_MISSING = ("dynamic_field", 1)
ROOT = h(b"R")


def funded(net, amount=100_000_000):
    net.mint("user", amount)


# §14.1 ------------------------------------------------------------------------------------------------------------
def test_buyer_pays_its_own_bid_not_the_node_ask(net):
    funded(net, 5_000_000)
    t = net.task()
    net.node("node-1")
    net.sub("node-1", t, 100)  # asks 100 per 1M units
    r = net.acquire_new_stack_entry("user", task_small_id=t, num_compute_units=1_000_000, price=1_000_000)
    assert r.balance_changes == {net.addr["user"]: -1_000_000}  # not 100
    s = int(net.events(r)[0]["stack_small_id"]["inner"])
    assert net.get_stack(s).price_per_one_million_compute_units == 1_000_000
    net.settle("node-1", s, 1_000_000)
    net.epoch()
    r = net.claim("node-1", s)
    assert r.balance_changes == {net.addr["node-1"]: 1_000_000}  # the node earns the bid too


# §14.2 ------------------------------------------------------------------------------------------------------------
def test_compute_units_capped_at_one_million(net):
    funded(net)
    t = net.task()
    for alias in ("node-1", "node-2"):
        net.node(alias)
        net.sub(alias, t, 1)
    assert {s.max_num_compute_units for s in net.subscriptions(t)} == {1_000_000}
    net.fails("ENoNodesEligibleForTask", "buy", t, 1_000_001, 1)
    net.fails("ENoNodesEligibleForTask", "buy", t, 2**40, 1)
    assert net.get_stack(net.buy(t, 1_000_000, 1, draw=0)).num_compute_units == 1_000_000


# §14.3 ------------------------------------------------------------------------------------------------------------
def test_acquire_and_settle_ignore_deprecation(net):
    funded(net)
    t = net.task()
    net.node("node-1")
    net.sub("node-1", t, 1)
    early = net.buy(t, 10, 1)
    net.deprecate_task("admin", task_small_id=t)
    s = net.buy(t, 10, 1)  # deprecated, still sold
    assert net.get_stack(s).task_small_id == t
    net.settle("node-1", s, 5)  # and settled
    net.settle("node-1", early, 5)
    net.epoch()
    net.claim("node-1", s, early)


def test_try_settle_ignores_is_claimed(net):
    funded(net)
    t = net.task(CONFIDENTIAL)
    net.node("node-1")
    net.sub("node-1", t, 1_000_000)
    s = net.buy(t, 1_000_000, 1_000_000)
    net.claim_cc("node-1", [s], [1_000_000])
    assert net.get_stack(s).is_claimed
    net.settle("node-1", s, 1_000_000)  # a ticket for an already paid stack
    assert net.get_ticket(s) is not None
    net.epoch()
    net.fails("EStackAlreadyClaimed", "claim", "node-1", s)  # but it cannot be paid twice
    assert net.usdc("node-1") == 1_000_000


# §14.4 ------------------------------------------------------------------------------------------------------------
def _three_subscribed(net, level=NO_SECURITY):
    funded(net)
    t = net.task(level)
    for alias in ("node-1", "node-2", "node-3"):
        net.node(alias)
        net.sub(alias, t, 1)
    return t


def test_stale_ids_are_swap_removed_lazily_at_the_next_purchase(net):
    t = _three_subscribed(net)
    net.unsubscribe_node_from_task("node-1", task_small_id=t)
    assert net.get_task(t).subscribed_nodes_small_ids == [1, 2, 3]  # not removed by unsubscribe
    s = net.buy(t, 10, 1, draw=0)
    assert net.get_task(t).subscribed_nodes_small_ids == [3, 2]  # index 0 swap-removed with the last
    assert net.get_stack(s).selected_node_id == 3  # eligible list in list order: [3, 2]


def test_unsubscribe_resubscribe_doubles_the_weight(net):
    funded(net)
    t = net.task()
    for alias in ("node-1", "node-2"):
        net.node(alias)
        net.sub(alias, t, 1)
    net.unsubscribe_node_from_task("node-1", task_small_id=t)
    net.sub("node-1", t, 1)
    assert net.get_task(t).subscribed_nodes_small_ids == [1, 2, 1]
    # eligible = [1, 2, 1]: draw 5 ⇒ index 2 ⇒ node 1 (with a 2-entry list, 5 % 2 = 1 would be node 2)
    assert net.get_stack(net.buy(t, 10, 1, draw=5)).selected_node_id == 1
    assert net.get_stack(net.buy(t, 10, 1, draw=4)).selected_node_id == 2
    assert net.get_stack(net.buy(t, 10, 1, draw=0)).selected_node_id == 1
    # duplicates of a live subscription are never cleaned
    assert net.get_task(t).subscribed_nodes_small_ids == [1, 2, 1]


def test_stale_duplicates_are_all_cleaned(net):
    funded(net)
    t = net.task()
    for alias in ("node-1", "node-2"):
        net.node(alias)
        net.sub(alias, t, 1)
    net.unsubscribe_node_from_task("node-1", task_small_id=t)
    net.sub("node-1", t, 1)
    net.unsubscribe_node_from_task("node-1", task_small_id=t)
    net.buy(t, 10, 1, draw=0)
    assert net.get_task(t).subscribed_nodes_small_ids == [2]


def test_stale_id_aborts_attestation_sampling(net):
    """§4.8(b): sampling attestation nodes borrows the price table for every listed id, stale ones included."""
    t = _three_subscribed(net, SAMPLING)
    net.force_attestation()
    s = net.buy(t, 10, 1, draw=0)
    net.unsubscribe_node_from_task("node-2", task_small_id=t)
    net.draws.push(0, 0)
    net.fails(DF_MISSING, "settle", "node-1", s, 1)
    # without the lottery there is no sampling, so the stale id does not matter
    net.set("set_cross_validation_probability_permille", 0)
    net.settle("node-1", s, 1)
    # a purchase cleans the list; sampling works again
    net.force_attestation()
    s2 = net.buy(t, 10, 1, draw=0)
    assert net.get_task(t).subscribed_nodes_small_ids == [1, 3]
    net.draws.push(0, 1)
    net.settle("node-1", s2, 1)
    assert net.get_ticket(s2).requested_attestation_nodes == [3]


# §14.5 / §14.6 ----------------------------------------------------------------------------------------------------
def test_sampling_with_replacement_may_pick_the_stacks_own_node_twice(net):
    t = _three_subscribed(net, SAMPLING)
    net.force_attestation()
    net.set("set_cross_validation_extra_nodes_count", 2)
    proof, leaves = honest_commitment(ROOT, extra=2)
    s = net.buy(t, 1_000_000, 1, draw=0)  # node 1
    net.draws.push(0, 3, 0)  # lottery, then eligible[3 % 3] = node 1, eligible[0] = node 1
    r = net.settle("node-1", s, 10, proof=proof, leaf=leaves[0])
    assert net.events(r)[0]["requested_attestation_nodes"] == [sid(1), sid(1)]
    assert net.get_ticket(s).requested_attestation_nodes == [1, 1]
    # the count is fixed by the config, not by how many distinct nodes exist: two slots for one node


def test_same_node_attesting_twice_counts_twice(net):
    t = _three_subscribed(net, SAMPLING)
    net.force_attestation()
    net.set("set_cross_validation_extra_nodes_count", 2)
    leaf0, leaf1 = h(b"\x00" + ROOT), h(b"\x01" + ROOT)
    proof = h(leaf0 + leaf1 + bytes(32))  # slot 2 is never written: node 2 always lands in slot 1
    s = net.buy(t, 1_000_000, 1, draw=0)
    net.draws.push(0, 1, 2)  # nodes 2 and 3
    net.settle("node-1", s, 10, proof=proof, leaf=leaf0)
    r1 = net.attest("node-2", s, proof, leaf1)
    assert net.names(r1) == ["NewStackSettlementAttestationEvent"]
    r2 = net.attest("node-2", s, proof, leaf1)  # again: completes without node 3
    assert net.names(r2) == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]
    tk = net.get_ticket(s)
    assert tk.already_attested_nodes == [2, 2] and not tk.is_in_dispute
    assert tk.stack_merkle_leaves_vector == leaf0 + leaf1 + bytes(32)


def test_own_node_attests_its_own_stack(net):
    t = _three_subscribed(net, SAMPLING)
    net.force_attestation()
    proof, (leaf0, leaf1) = honest_commitment(ROOT)
    s = net.buy(t, 1_000_000, 1, draw=0)
    net.draws.push(0, 0)  # node 1 attests its own stack
    net.settle("node-1", s, 10, proof=proof, leaf=leaf0)
    r = net.attest("node-1", s, proof, leaf1)
    assert net.names(r) == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]


# §14.9 ------------------------------------------------------------------------------------------------------------
def test_claim_without_attestations_slashes_absent_attesters_from_zero_collateral(net):
    t = _three_subscribed(net, SAMPLING)
    net.force_attestation()
    s = net.buy(t, 1_000_000, 1_000_000, draw=0)  # pays 1_212_000
    net.draws.push(0, 1)  # node 2 requested, never attests
    net.settle("node-1", s, 500_000)
    net.epoch()
    r = net.claim("node-1", s)
    assert net.events(r)[0]["attestation_nodes"] == [sid(2)]
    assert net.get_node(2).available_fee_amount == 0  # no credit for an absent attester
    assert net.get_node(2).collateral == 0
    assert net.cfg().communal_treasury == 0  # nothing to slash
    assert r.balance_changes == {net.addr["node-1"]: 600_000, net.addr["user"]: 600_000}
    net.conserved()


# §14.11 -----------------------------------------------------------------------------------------------------------
def test_reputation_is_fixed_at_50_and_collateral_zero(net):
    t = _three_subscribed(net)
    strict = net.task(min_score=51)
    s = net.buy(t, 1_000_000, 1, draw=0)
    net.settle("node-1", s, 1)
    net.epoch()
    net.claim("node-1", s)
    assert {net.get_node(n).reputation_score for n in (1, 2, 3)} == {50}
    assert {net.get_node(n).collateral for n in (1, 2, 3)} == {0}
    for alias in ("node-1", "node-2", "node-3"):
        net.fails("ENodeDoesNotMeetTaskRequirements", "sub", alias, strict, 1)


# §14.12 -----------------------------------------------------------------------------------------------------------
def test_task_event_ids_differ_and_admin_removal_is_silent(net):
    t1, t2 = net.task(), net.task()
    badge1 = net.badge("admin", "TaskBadge", t1).object_id
    registered = [e.parsed_json for e in net.ln.events(limit=100).events if e.name == "TaskRegisteredEvent"]
    assert registered[0]["task_id"] == badge1  # TaskBadge id
    task_id = net.get_task(t1).task_id
    assert task_id != badge1
    r = net.deprecate_task("admin", task_small_id=t1)
    assert net.events(r)[0]["task_id"] == task_id  # Task id
    net.deprecate_task("admin", task_small_id=t2)
    net.epoch(2)
    r = net.remove_deprecated_task("admin", task_small_id=t1)
    assert net.events(r)[0]["task_id"] == task_id  # Task id
    r = net.remove_deprecated_task_by_admin("admin", task_small_id=t2)
    assert r.events == []
    assert net.get_task(t2) is None


# §14.13 -----------------------------------------------------------------------------------------------------------
def test_ticket_claims_delete_stacks_confidential_claims_keep_them(net):
    funded(net)
    cc, plain = net.task(CONFIDENTIAL), net.task(NO_SECURITY)
    net.node("node-1")
    net.sub("node-1", cc, 1)
    net.sub("node-1", plain, 1)
    a, b = net.buy(plain, 10, 1), net.buy(cc, 10, 1)
    net.settle("node-1", a, 5)
    net.epoch()
    net.claim("node-1", a)
    net.claim_cc("node-1", [b], [5])
    assert net.get_stack(a) is None and net.get_ticket(a) is None
    kept = net.get_stack(b)
    assert kept is not None and kept.is_claimed
    assert [s.stack_small_id for s in net.ln.list_stacks()] == [b]


# §4.4: removing a task leaves its stacks behind -------------------------------------------------------------------
def test_stacks_of_a_removed_task_hit_framework_aborts(net):
    funded(net)
    t = net.task(CONFIDENTIAL)
    net.node("node-1")
    net.sub("node-1", t, 1)
    s = net.buy(t, 10, 1)
    net.deprecate_task("admin", task_small_id=t)
    net.epoch()
    net.remove_deprecated_task("admin", task_small_id=t)
    assert net.get_stack(s) is not None
    net.fails(DF_MISSING, "claim_cc", "node-1", [s], [1])
    net.fails(DF_MISSING, "settle", "node-1", s, 1, proof=P32)
