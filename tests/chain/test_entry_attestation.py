"""SamplingConsensus settlement: the lottery in try_settle_stack (§4.10 step 6), submit_stack_settlement_attestation
(§4.11) and start_attestation_dispute (§4.12), with the randomness forced through the rng override.

Honest commitment (§8.3, the self-consistent scheme): leaf_i = blake2b256(u8(i) ‖ R), proof = blake2b256(leaf_0 ‖ leaf_1).
"""

from __future__ import annotations

from tests.chain.chainkit import CONFIDENTIAL, L32, NO_SECURITY, P32, SAMPLING, h, honest_commitment, sid

DF_MISSING = ("dynamic_field", 1)
ROOT = h(b"merkle root of the stack's requests and responses")
PROOF, (LEAF0, LEAF1) = honest_commitment(ROOT)


def sampled_market(net, level=SAMPLING, nodes=("node-1", "node-2", "node-3"), force=True):
    net.mint("user", 100_000_000)
    t = net.task(level)
    for alias in nodes:
        net.node(alias)
        net.sub(alias, t, 1_000)
    if force:
        net.force_attestation()
    return t


def settled(net, t, *, attesters=(1,), proof=PROOF, leaf=LEAF0, claimed=500_000):
    """Node 1 buys-and-settles a stack; the lottery fires (draw 0) and draws ``attesters`` (eligible indexes)."""
    s = net.buy(t, 1_000_000, 1_000, draw=0)
    net.draws.push(0, *attesters)
    net.settle("node-1", s, claimed, proof=proof, leaf=leaf)
    return s


# ====================================================================== the lottery (§4.10 step 6)
def test_lottery_fires_at_probability_boundary(net):
    """Default 10 ‰: r = draw % 1000 + 1 fires iff r <= 10."""
    t = sampled_market(net, force=False)
    cases = [(9, True), (10, False), (1009, True), (999, False), (0, True)]
    for draw, fires in cases:
        s = net.buy(t, 10, 1_000, draw=0)
        before = net.draws.count
        net.draws.push(draw, 2)  # the second value only matters if the lottery fired: eligible[2] = node 3
        r = net.settle("node-1", s, 1)
        expected = [3] if fires else []
        assert net.get_ticket(s).requested_attestation_nodes == expected, draw
        assert net.events(r)[0]["requested_attestation_nodes"] == [sid(n) for n in expected]
        assert net.draws.count - before == (2 if fires else 1)  # one lottery draw + count draws if fired
        net.draws.queue.clear()


def test_lottery_never_fires_at_zero_permille(net):
    t = sampled_market(net, force=False)
    net.set("set_cross_validation_probability_permille", 0)
    s = net.buy(t, 10, 1_000, draw=0)
    net.draws.push(0)
    net.settle("node-1", s, 1)
    assert net.get_ticket(s).requested_attestation_nodes == []


def test_no_lottery_outside_sampling_consensus(net):
    net.mint("user", 1_000)
    net.node("node-1")
    net.force_attestation()
    for level in (NO_SECURITY, CONFIDENTIAL):
        t = net.task(level)
        net.sub("node-1", t, 1)
        s = net.buy(t, 10, 1, draw=0)
        before = net.draws.count
        net.settle("node-1", s, 1)
        assert net.draws.count == before
        assert net.get_ticket(s).requested_attestation_nodes == []


def test_fewer_eligible_than_count_returns_all_without_drawing(net):
    t = sampled_market(net, nodes=("node-1", "node-2"))
    net.set("set_cross_validation_extra_nodes_count", 3)
    s = net.buy(t, 10, 1_000, draw=0)
    before = net.draws.count
    net.settle("node-1", s, 1)
    assert net.draws.count - before == 1  # only the lottery
    tk = net.get_ticket(s)
    assert tk.requested_attestation_nodes == [1, 2]
    assert len(tk.stack_merkle_leaves_vector) == 32 * 4  # sized by the count, not by the draw


def test_attestation_sampling_uses_the_price_filter_of_the_stack(net):
    """Eligible for attestation: ask <= the stack's price, not disabled (own node included)."""
    net.mint("user", 10_000_000)
    t = net.task(SAMPLING)
    for alias, ask in (("node-1", 100), ("node-2", 5_000), ("node-3", 100)):
        net.node(alias)
        net.sub(alias, t, ask)
    net.force_attestation()
    s = net.buy(t, 10, 1_000, draw=0)  # eligible [1, 3] at bid 1_000
    net.permanently_disable_node("node-3")
    net.draws.push(0, 1)  # eligible for attestation is now [1]: 1 % 1 = 0 ⇒ node 1
    net.settle("node-1", s, 1)
    assert net.get_ticket(s).requested_attestation_nodes == [1]


# ====================================================================== §4.11 happy path: honest attestation
def test_honest_attestation_completes(net):
    t = sampled_market(net)
    net.epoch(3)
    s = settled(net, t, attesters=(1,))  # eligible [1, 2, 3] ⇒ node 2
    tk = net.get_ticket(s)
    assert tk.requested_attestation_nodes == [2]
    assert tk.stack_merkle_leaves_vector == LEAF0 + bytes(32)
    net.epoch()  # E + 1: still inside the window
    r = net.attest("node-2", s, PROOF, LEAF1)
    assert net.names(r) == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]
    assert net.events(r)[0] == {
        "stack_small_id": sid(s),
        "attestation_node_id": sid(2),
        "committed_stack_proof": list(PROOF),
        "stack_merkle_leaf": list(LEAF1),
    }
    assert net.events(r)[1] == {
        "stack_small_id": sid(s),
        "selected_node_id": sid(1),
        "num_claimed_compute_units": "500000",
        "requested_attestation_nodes": [sid(2)],
        "dispute_settled_at_epoch": "4",  # the epoch of the final attestation ...
        "committed_stack_proof": list(PROOF),
    }
    tk = net.get_ticket(s)
    assert tk.dispute_settled_at_epoch == 4  # ... the stored one is unchanged (E + 1 = 4 here too)
    assert tk.stack_merkle_leaves_vector == LEAF0 + LEAF1
    assert tk.already_attested_nodes == [2] and tk.is_in_dispute is False
    assert h(LEAF0 + LEAF1) == PROOF


def test_final_attestation_event_carries_the_current_epoch_not_the_stored_one(net):
    t = sampled_market(net)
    net.epoch(2)
    s = settled(net, t)
    r = net.attest("node-2", s, PROOF, LEAF1)  # attested in E = 2
    assert net.events(r, "StackSettlementTicketEvent")[0]["dispute_settled_at_epoch"] == "2"
    assert net.get_ticket(s).dispute_settled_at_epoch == 3


def test_two_attesters_partial_then_complete(net):
    t = sampled_market(net)
    net.set("set_cross_validation_extra_nodes_count", 2)
    proof, leaves = honest_commitment(ROOT, extra=2)
    s = settled(net, t, attesters=(1, 2), proof=proof, leaf=leaves[0])  # nodes 2 and 3
    assert net.get_ticket(s).requested_attestation_nodes == [2, 3]
    r = net.attest("node-3", s, proof, leaves[2])  # order of submissions does not matter: slot = position + 1
    assert net.names(r) == ["NewStackSettlementAttestationEvent"]
    assert net.get_ticket(s).stack_merkle_leaves_vector == leaves[0] + bytes(32) + leaves[2]
    r = net.attest("node-2", s, proof, leaves[1])
    assert net.names(r) == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]
    assert net.get_ticket(s).already_attested_nodes == [3, 2]


# ====================================================================== wrong proofs ⇒ disputes
def test_wrong_proof_opens_a_dispute(net):
    t = sampled_market(net)
    s = settled(net, t)
    wrong = h(b"another history")
    r = net.attest("node-2", s, wrong, LEAF1)
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert net.events(r)[0] == {
        "stack_small_id": sid(s),
        "attestation_commitment": list(wrong),
        "attestation_node_id": sid(2),
        "original_node_id": sid(1),
        "original_commitment": list(PROOF),
    }
    tk = net.get_ticket(s)
    assert tk.is_in_dispute is True
    assert tk.already_attested_nodes == [] and tk.stack_merkle_leaves_vector == LEAF0 + bytes(32)
    # a second mismatching attestation goes through start_attestation_dispute again and aborts
    net.fails("EStackAlreadyInDispute", "attest", "node-2", s, wrong, LEAF1)


def test_wrong_leaf_fails_the_final_hash_check(net):
    t = sampled_market(net)
    s = settled(net, t)
    r = net.attest("node-2", s, PROOF, h(b"not my leaf"))
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert net.events(r)[0]["attestation_commitment"] == list(PROOF)
    tk = net.get_ticket(s)
    assert tk.is_in_dispute and tk.already_attested_nodes == [2]  # the write before the check persists


def test_historical_node_formula_always_ends_in_dispute(net):
    """atoma-node's proof = blake2b256(0x00 ‖ R) = the selected node's leaf (quirk §14.7): honest nodes, dispute."""
    t = sampled_market(net)
    historical = h(b"\x00" + ROOT)
    s = settled(net, t, proof=historical, leaf=historical)
    r = net.attest("node-2", s, historical, h(b"\x01" + ROOT))  # the attester agrees on the proof
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert net.events(r)[0]["attestation_commitment"] == list(historical)
    assert net.get_ticket(s).is_in_dispute
    net.epoch()
    net.fails("EStackInDispute", "claim", "node-1", s)


# ====================================================================== §4.11 aborts
def test_attestation_aborts_each(net):
    t = sampled_market(net)
    plain = net.task(NO_SECURITY)
    net.sub("node-1", plain, 1)
    bare = net.buy(t, 10, 1_000, draw=0)
    s = settled(net, t)  # requested [2]
    p = net.buy(plain, 10, 1, draw=0)
    net.settle("node-1", p, 1)
    net.fails("EStackNotFound", "attest", "node-2", 99, PROOF, LEAF1)
    net.fails("EStackNotInSettlementDispute", "attest", "node-2", bare, PROOF, LEAF1)
    net.fails("EInvalidCommittedStackProof", "attest", "node-2", s, PROOF[:31], LEAF1)
    net.fails("EInvalidStackMerkleLeaf", "attest", "node-2", s, PROOF, LEAF1 + b"\0")
    net.fails("EStackDoesNotRequireSamplingConsensus", "attest", "node-1", p, P32, L32)
    net.fails("ENodeNotSelectedForAttestation", "attest", "node-3", s, PROOF, LEAF1)
    net.fails("ENodeNotSelectedForAttestation", "attest", "node-1", s, PROOF, LEAF1)  # the settling node itself
    net.epoch(2)  # E + 2
    net.fails("EStackDisputePeriodOver", "attest", "node-2", s, PROOF, LEAF1)


def test_attestation_window_is_E_and_E_plus_1(net):
    t = sampled_market(net)
    net.set("set_cross_validation_extra_nodes_count", 2)
    proof, leaves = honest_commitment(ROOT, extra=2)
    s = settled(net, t, attesters=(1, 2), proof=proof, leaf=leaves[0])
    net.attest("node-2", s, proof, leaves[1])  # E
    net.epoch()
    net.epoch()
    net.fails("EStackDisputePeriodOver", "attest", "node-3", s, proof, leaves[2])  # E + 2


def test_attestation_check_order(net):
    t = sampled_market(net)
    plain = net.task(NO_SECURITY)
    net.sub("node-1", plain, 1)
    bare = net.buy(t, 10, 1_000, draw=0)
    s = settled(net, t)
    p = net.buy(plain, 10, 1, draw=0)
    net.settle("node-1", p, 1)
    net.fails("EStackNotFound", "attest", "node-3", 99, b"", b"")
    net.fails("EStackNotInSettlementDispute", "attest", "node-3", bare, b"", b"")  # ticket before lengths
    net.fails("EInvalidCommittedStackProof", "attest", "node-3", s, b"x", b"y")  # proof before leaf
    net.fails("EInvalidStackMerkleLeaf", "attest", "node-3", p, P32, b"y")  # leaf before security level
    net.epoch(2)
    net.fails("EStackDoesNotRequireSamplingConsensus", "attest", "node-3", p, P32, L32)  # level before window
    net.fails("EStackDisputePeriodOver", "attest", "node-3", s, PROOF, LEAF1)  # window before selection


def test_attestation_after_claim_finds_no_stack(net):
    """Epoch E+1: claiming and attesting overlap; once claimed, the stack is gone."""
    t = sampled_market(net)
    net.mint("user", 1)
    s = settled(net, t)
    net.epoch()
    net.claim("node-1", s)  # no attestation needed (quirk §14.9)
    net.fails("EStackNotFound", "attest", "node-2", s, PROOF, LEAF1)


# ====================================================================== §4.12 start_attestation_dispute
def test_start_dispute_by_any_node_badge(net):
    t = sampled_market(net)
    s = settled(net, t)  # requested [2]; node 3 has nothing to do with it
    net.epoch(10)  # no epoch check
    r = net.start_attestation_dispute("node-3", stack_small_id=s, attestation_commitment=b"\x01\x02\x03")
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert net.events(r)[0] == {
        "stack_small_id": sid(s),
        "attestation_commitment": [1, 2, 3],  # length not checked
        "attestation_node_id": sid(3),
        "original_node_id": sid(1),
        "original_commitment": list(PROOF),
    }
    assert net.get_ticket(s).is_in_dispute


def test_start_dispute_on_a_ticket_without_attesters(net):
    t = sampled_market(net, force=False)
    s = net.buy(t, 10, 1_000, draw=0)
    net.draws.push(500)  # lottery does not fire
    net.settle("node-1", s, 1)
    net.start_attestation_dispute("node-1", stack_small_id=s, attestation_commitment=b"")
    assert net.get_ticket(s).is_in_dispute


def test_start_dispute_aborts_each(net):
    t = sampled_market(net)
    plain = net.task(NO_SECURITY)
    net.sub("node-1", plain, 1)
    bare = net.buy(t, 10, 1_000, draw=0)
    s = settled(net, t)
    p = net.buy(plain, 10, 1, draw=0)
    net.settle("node-1", p, 1)
    net.fails(DF_MISSING, "start_attestation_dispute", "node-2", stack_small_id=99, attestation_commitment=P32)
    net.fails(DF_MISSING, "start_attestation_dispute", "node-2", stack_small_id=bare, attestation_commitment=P32)
    net.fails("ETaskSecurityLevelNotSamplingConsensus", "start_attestation_dispute", "node-2", stack_small_id=p,
              attestation_commitment=P32)
    net.start_attestation_dispute("node-2", stack_small_id=s, attestation_commitment=P32)
    net.fails("EStackAlreadyInDispute", "start_attestation_dispute", "node-3", stack_small_id=s,
              attestation_commitment=P32)


def test_disputes_are_terminal(net):
    """No resolution entry point: a disputed ticket is never claimable; honest attestations do not clear it."""
    t = sampled_market(net)
    s = settled(net, t)
    paid_in = net.treasury()
    net.start_attestation_dispute("node-3", stack_small_id=s, attestation_commitment=P32)
    # the attestation path does not check is_in_dispute: the honest attester still completes it ...
    r = net.attest("node-2", s, PROOF, LEAF1)
    assert net.names(r) == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]
    assert net.get_ticket(s).is_in_dispute  # ... but the dispute stays
    for _ in range(5):
        net.epoch()
        net.fails("EStackInDispute", "claim", "node-1", s)
    net.fails("EStackInSettlementDispute", "settle", "node-1", s, 1)
    assert net.treasury() == paid_in  # funds stay in the fee treasury forever
    net.conserved()
