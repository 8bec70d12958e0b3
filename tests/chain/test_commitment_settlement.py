"""The commitment math of ``atoma_ops.protocol.commitments`` (design.md "Commitments") against the localnet's
``atoma::db``: SamplingConsensus task, attestation forced, attesters drawn through the scripted rng.

The selected node commits to its history with ``commit(leaves, k, position=0)``; each attester recomputes
``commit(leaves, k, position=j+1)`` from the history it was given. Honest ⇒ the final check
``blake2b256(leaf_0 ‖ … ‖ leaf_k) == proof`` holds (StackSettlementTicketEvent, claimable); any difference in the
history, or the historical node formula, ⇒ a terminal dispute (§4.11, §4.12, §8).
"""

from __future__ import annotations

import copy

from tests.chain.chainkit import SAMPLING, h, sid

from atoma_ops.protocol.commitments import commit, historical_node_proof, leaves_of

MODEL = "meta-llama/Llama-3.3-70B-Instruct"


def exchange(i: int, question: str, answer: str, prompt_tokens: int, completion_tokens: int) -> tuple[dict, dict]:
    request = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": 64}
    response = {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "created": 1_700_000_000 + i,
        "model": MODEL,
        "system_fingerprint": "fp_localnet",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return request, response


HISTORY = [
    exchange(0, "What is 2 + 2?", "4", 14, 1),
    exchange(1, "Name a prime above 10.", "11", 15, 1),
    exchange(2, "Traduis « bonjour » en anglais.", "Hello.", 18, 2),
]
CLAIMED = sum(resp["usage"]["total_tokens"] for _, resp in HISTORY)  # 51 units
PRICE = 1_000_000  # per one million units
# SamplingConsensus fees (§4.13, sampling_consensus_charge_permille = 1200), by hand:
NODE_FEE = CLAIMED * PRICE * 1200 // (1_000_000 * 1000)  # 61
REFUND = (1_000_000 - CLAIMED) * PRICE * 1200 // (1_000_000 * 1000)  # 1_199_938


def replay(history):
    """What an attester holds: an independent deep copy whose nondeterministic fields differ (ids, timestamps)."""
    out = copy.deepcopy(history)
    for n, (_, resp) in enumerate(out):
        resp["id"] = f"chatcmpl-replay-{n}"
        resp["created"] += 3600
        resp["system_fingerprint"] = "fp_attester"
    return out


def tampered(history, index=1, content="13"):
    out = copy.deepcopy(history)
    out[index][1]["choices"][0]["message"]["content"] = content
    return out


def market(net, extra: int = 1):
    """SamplingConsensus task, nodes 1-3 at ask 1_000_000 (1 USDC per 1M units), attestation forced, ``extra``
    attesters per ticket."""
    net.mint("user", 100_000_000)
    t = net.task(SAMPLING)
    for alias in ("node-1", "node-2", "node-3"):
        net.node(alias)
        net.sub(alias, t, PRICE)
    net.force_attestation()
    if extra != 1:
        net.set("set_cross_validation_extra_nodes_count", extra)
    return t


def settle(net, t, proof: bytes, leaf: bytes, attesters=(1,)):
    """Node 1 buys a stack and settles it; the lottery fires (draw 0) and draws ``attesters`` (eligible indexes
    into [node 1, node 2, node 3])."""
    s = net.buy(t, 1_000_000, PRICE, draw=0)  # node 1
    net.draws.push(0, *attesters)
    r = net.settle("node-1", s, CLAIMED, proof=proof, leaf=leaf)
    assert net.names(r) == ["StackTrySettleEvent"]
    return s


def assert_claimable(net, s, attesters):
    """After the window, node 1 claims: fee to node 1, refund to the buyer, each attester credited fee / k."""
    k = net.cfg().cross_validation_extra_nodes_count
    credits = {n: net.get_node(n).available_fee_amount for n in attesters}
    net.epoch()
    r = net.claim("node-1", s)
    assert net.names(r) == ["StackSettlementTicketClaimedEvent"]
    ev = net.events(r)[0]
    assert ev["num_claimed_compute_units"] == str(CLAIMED)
    assert ev["user_refund_amount"] == str(REFUND)
    assert ev["attestation_nodes"] == [sid(n) for n in attesters]
    assert r.balance_changes == {net.addr["node-1"]: NODE_FEE, net.addr["user"]: REFUND}
    for n in attesters:
        assert net.get_node(n).available_fee_amount - credits[n] == NODE_FEE // k  # credited, not slashed
    assert net.get_ticket(s) is None and net.get_stack(s) is None
    net.conserved()


def assert_dispute_is_terminal(net, s):
    assert net.get_ticket(s).is_in_dispute is True
    net.epoch()
    net.fails("EStackInDispute", "claim", "node-1", s)
    net.epoch()
    net.fails("EStackInDispute", "claim", "node-1", s)


# ====================================================================== honest: one attester
def test_honest_history_settles_and_is_claimable(net):
    t = market(net)
    mine = commit(leaves_of(HISTORY), extra_nodes_count=1, position=0)
    assert mine.num_leaves == 3
    s = settle(net, t, mine.committed_stack_proof, mine.stack_merkle_leaf)  # eligible[1] = node 2
    tk = net.get_ticket(s)
    assert tk.requested_attestation_nodes == [2]
    assert tk.committed_stack_proof == mine.committed_stack_proof
    assert tk.stack_merkle_leaves_vector == mine.stack_merkle_leaf + bytes(32)

    theirs = commit(leaves_of(replay(HISTORY)), extra_nodes_count=1, position=1)  # node 2 is position 0 ⇒ leaf_1
    assert theirs.root == mine.root and theirs.committed_stack_proof == mine.committed_stack_proof
    r = net.attest("node-2", s, theirs.committed_stack_proof, theirs.stack_merkle_leaf)
    assert net.names(r) == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]
    assert net.events(r, "StackSettlementTicketEvent")[0]["committed_stack_proof"] == list(mine.committed_stack_proof)

    tk = net.get_ticket(s)
    assert tk.is_in_dispute is False and tk.already_attested_nodes == [2]
    assert tk.stack_merkle_leaves_vector == mine.stack_merkle_leaf + theirs.stack_merkle_leaf
    assert h(tk.stack_merkle_leaves_vector) == tk.committed_stack_proof  # the contract's final check

    net.fails("EStackDisputePeriodIsNotOver", "claim", "node-1", s)  # still epoch E
    assert_claimable(net, s, [2])


# ====================================================================== tampered history ⇒ dispute
def test_attester_with_a_different_response_opens_a_dispute(net):
    """The attester's history has one response content changed: its proof differs ⇒ dispute at step 7."""
    t = market(net)
    mine = commit(leaves_of(HISTORY), 1, position=0)
    s = settle(net, t, mine.committed_stack_proof, mine.stack_merkle_leaf)
    theirs = commit(leaves_of(tampered(HISTORY)), 1, position=1)
    assert theirs.committed_stack_proof != mine.committed_stack_proof
    r = net.attest("node-2", s, theirs.committed_stack_proof, theirs.stack_merkle_leaf)
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert net.events(r)[0] == {
        "stack_small_id": sid(s),
        "attestation_commitment": list(theirs.committed_stack_proof),
        "attestation_node_id": sid(2),
        "original_node_id": sid(1),
        "original_commitment": list(mine.committed_stack_proof),
    }
    assert net.get_ticket(s).already_attested_nodes == []
    assert_dispute_is_terminal(net, s)


def test_selected_node_with_a_tampered_history_is_disputed_by_an_honest_attester(net):
    t = market(net)
    cheat = commit(leaves_of(tampered(HISTORY, index=2, content="Good morning.")), 1, position=0)
    s = settle(net, t, cheat.committed_stack_proof, cheat.stack_merkle_leaf)
    honest = commit(leaves_of(HISTORY), 1, position=1)
    r = net.attest("node-2", s, honest.committed_stack_proof, honest.stack_merkle_leaf)
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert net.events(r)[0]["original_commitment"] == list(cheat.committed_stack_proof)
    assert_dispute_is_terminal(net, s)


def test_reordered_history_is_disputed(net):
    """Serving order is part of the commitment: the same exchanges in another order give another root."""
    t = market(net)
    mine = commit(leaves_of(HISTORY), 1, position=0)
    s = settle(net, t, mine.committed_stack_proof, mine.stack_merkle_leaf)
    theirs = commit(leaves_of([HISTORY[1], HISTORY[0], HISTORY[2]]), 1, position=1)
    r = net.attest("node-2", s, theirs.committed_stack_proof, theirs.stack_merkle_leaf)
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert_dispute_is_terminal(net, s)


# ====================================================================== the historical node formula
def test_historical_node_formula_with_an_honest_attester_ends_in_dispute(net):
    """The selected node submits atoma-node's old proof H(0x00 ‖ R) (= its leaf_0); the attester follows the design."""
    t = market(net)
    leaves = leaves_of(HISTORY)
    root = commit(leaves, 1).root
    historical = historical_node_proof(root)
    assert historical == commit(leaves, 1, position=0).stack_merkle_leaf
    s = settle(net, t, historical, historical)
    honest = commit(leaves_of(replay(HISTORY)), 1, position=1)
    r = net.attest("node-2", s, honest.committed_stack_proof, honest.stack_merkle_leaf)
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert net.events(r)[0]["attestation_commitment"] == list(honest.committed_stack_proof)
    assert net.events(r)[0]["original_commitment"] == list(historical)
    assert_dispute_is_terminal(net, s)


def test_historical_node_formula_on_both_sides_still_ends_in_dispute(net):
    """Both nodes use the old formula (proofs agree): the final check H(leaf_0 ‖ leaf_1) == H(0x00 ‖ R) fails."""
    t = market(net)
    root = commit(leaves_of(HISTORY), 1).root
    historical = historical_node_proof(root)
    s = settle(net, t, historical, historical)
    r = net.attest("node-2", s, historical, h(b"\x01" + root))
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert net.get_ticket(s).already_attested_nodes == [2]  # written before the final check
    assert_dispute_is_terminal(net, s)


# ====================================================================== two attesters (k = 2)
def test_two_attesters_at_positions_1_and_2_settle(net):
    t = market(net, extra=2)
    mine = commit(leaves_of(HISTORY), extra_nodes_count=2, position=0)
    s = settle(net, t, mine.committed_stack_proof, mine.stack_merkle_leaf, attesters=(1, 2))  # nodes 2, 3
    tk = net.get_ticket(s)
    assert tk.requested_attestation_nodes == [2, 3]
    assert tk.stack_merkle_leaves_vector == mine.stack_merkle_leaf + bytes(64)

    a1 = commit(leaves_of(replay(HISTORY)), 2, position=1)  # node 2: requested position 0
    a2 = commit(leaves_of(replay(HISTORY)), 2, position=2)  # node 3: requested position 1
    r = net.attest("node-3", s, a2.committed_stack_proof, a2.stack_merkle_leaf)
    assert net.names(r) == ["NewStackSettlementAttestationEvent"]
    r = net.attest("node-2", s, a1.committed_stack_proof, a1.stack_merkle_leaf)
    assert net.names(r) == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]
    tk = net.get_ticket(s)
    assert tk.is_in_dispute is False
    assert tk.stack_merkle_leaves_vector == mine.stack_merkle_leaf + a1.stack_merkle_leaf + a2.stack_merkle_leaf
    assert_claimable(net, s, [2, 3])


def test_two_attesters_with_swapped_positions_end_in_dispute(net):
    """Each attester must use its own position: leaves in the wrong slots fail the final hash check."""
    t = market(net, extra=2)
    mine = commit(leaves_of(HISTORY), 2, position=0)
    s = settle(net, t, mine.committed_stack_proof, mine.stack_merkle_leaf, attesters=(1, 2))  # nodes 2, 3
    wrong_for_2 = commit(leaves_of(HISTORY), 2, position=2)
    wrong_for_3 = commit(leaves_of(HISTORY), 2, position=1)
    net.attest("node-2", s, wrong_for_2.committed_stack_proof, wrong_for_2.stack_merkle_leaf)
    r = net.attest("node-3", s, wrong_for_3.committed_stack_proof, wrong_for_3.stack_merkle_leaf)
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert_dispute_is_terminal(net, s)


def test_one_of_two_attesters_tampered_ends_in_dispute(net):
    t = market(net, extra=2)
    mine = commit(leaves_of(HISTORY), 2, position=0)
    s = settle(net, t, mine.committed_stack_proof, mine.stack_merkle_leaf, attesters=(1, 2))
    a1 = commit(leaves_of(HISTORY), 2, position=1)
    r = net.attest("node-2", s, a1.committed_stack_proof, a1.stack_merkle_leaf)
    assert net.names(r) == ["NewStackSettlementAttestationEvent"]
    bad = commit(leaves_of(tampered(HISTORY, index=0, content="5")), 2, position=2)
    r = net.attest("node-3", s, bad.committed_stack_proof, bad.stack_merkle_leaf)
    assert net.names(r) == ["StackAttestationDisputeEvent"]
    assert_dispute_is_terminal(net, s)
