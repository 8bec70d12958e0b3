"""End to end on a SamplingConsensus task with attestation forced: node 1 serves a stack with the real CPU engine and
try-settles with the real commitment; node 2 (drawn as attester) imports the exported history, replays it through
the engine and attests. Honest → no dispute (StackSettlementTicketEvent); a forged history → dispute.

Randomness: ``draws`` scripts the localnet's u64 draws. ``buy(draw=0)`` gives the stack to eligible[0] = node 1;
at try-settle the lottery draw 0 gives r = 1 ≤ 1000 (probability forced to 1000‰) and the next draw 1 picks
eligible[1] = node 2 as the attester (the contract draws with replacement among all eligible nodes, node 1
included: this is the seed that gets a second node to replay the stack).
"""

from __future__ import annotations


import pytest

from atoma_ops.protocol.commitments import (
    MerkleFrontier,
    canonical_json,
    commit,
    payload_hash,
    request_leaf,
    response_hash,
)
from atoma_ops.serving.history import export_jsonl, import_jsonl
from atoma_ops.serving.replay import replay
from atoma_ops.testing.serve_all import serve_all

from tests.serving.test_kit import PRICE, SAMPLING, ask, attest, market, net, open_node, try_settle  # noqa: E402,F401


def sampling_market(net) -> int:
    t = market(net, SAMPLING)
    net.force_attestation()
    return t


@pytest.mark.slow
def test_honest_stack_is_attested_without_dispute(engine, net, localnet_home, tmp_path):
    t = sampling_market(net)
    s = net.buy(t, 100_000, PRICE, draw=0)
    assert net.get_stack(s).selected_node_id == 1
    node1 = open_node(net, localnet_home, "node-1", engine)
    requests = [ask(i, 8) for i in range(20)]
    requests[5] = ask(5, 8, temperature=0.8, seed=11)  # seeded sampling replays too
    outcomes = net.run(serve_all(node1, s, requests))
    assert all(o.ok for o in outcomes)
    used = node1.store.usage(s).used_units
    file = export_jsonl(node1.history(s), tmp_path / "stack.jsonl")

    net.draws.push(0, 1)
    settled = try_settle(net, node1, localnet_home, s)
    assert settled.requested_attestation_nodes == [2]
    ticket = net.get_ticket(s)
    assert ticket.num_claimed_compute_units == used == settled.claimed_units
    assert "0x" + ticket.committed_stack_proof.hex() == settled.committed_stack_proof
    assert "0x" + ticket.stack_merkle_leaves_vector[:32].hex() == settled.stack_merkle_leaf

    node2 = open_node(net, localnet_home, "node-2", engine)
    history = import_jsonl(file, expect_stack=s)
    result = attest(net, node2, localnet_home, s, history)
    assert result.status == "success" and result.replay["equal"] and result.replay["first_divergence"] is None
    assert result.history_matches_ticket and result.position == 1
    assert not result.disputed and result.completed
    tx = net.run(node2.chain.get_transaction(result.digest))
    assert net.names(tx) == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]
    assert net.get_ticket(s).is_in_dispute is False

    # a second, independent replay gives the same root
    again = replay(history, engine)
    assert again.equal and "0x" + again.replayed_root.hex() == result.replay["replayed_root"] == settled.root

    # and the node is paid for exactly the metered units once the window is over
    net.epoch()
    claim = net.claim("node-1", s)
    assert net.events(claim, "StackSettlementTicketClaimedEvent")[0]["num_claimed_compute_units"] == str(used)


def test_forged_history_is_reported_at_the_right_index_and_disputed(engine, net, localnet_home, tmp_path):
    t = sampling_market(net)
    s = net.buy(t, 100_000, PRICE, draw=0)
    node1 = open_node(net, localnet_home, "node-1", engine)
    assert all(o.ok for o in net.run(serve_all(node1, s, [ask(i, 4) for i in range(4)])))

    # node 1 is dishonest: it rewrites response 2 in its own history (hashes made consistent) before committing
    history = node1.history(s)
    real = history.entries[2].response
    forged = {**real, "choices": [{**real["choices"][0], "message": {"role": "assistant", "content": "forged"}}]}
    p, r = payload_hash(history.entries[2].request), response_hash(forged)
    node1.store.conn.execute(
        "UPDATE history SET response = ?, response_hash = ?, leaf = ? WHERE stack_small_id = ? AND idx = 2",
        (canonical_json(forged), r, request_leaf(p, r), s),
    )
    # ... and the frontier its store keeps beside the stack (what try-settle commits to), so its commitment is
    # over the forged history it will export
    forged_leaves = [e.leaf for e in node1.history(s).entries]
    node1.store.conn.execute(
        "UPDATE stacks SET frontier = ? WHERE stack_small_id = ?", (MerkleFrontier.from_leaves(forged_leaves).to_bytes(), s)
    )
    file = export_jsonl(node1.history(s), tmp_path / "forged.jsonl")
    net.draws.push(0, 1)
    settled = try_settle(net, node1, localnet_home, s)
    assert settled.requested_attestation_nodes == [2]

    node2 = open_node(net, localnet_home, "node-2", engine)
    imported = import_jsonl(file)  # the file is self-consistent: it imports
    result = attest(net, node2, localnet_home, s, imported)
    report = result.replay
    assert not report["equal"] and report["diverging"] == [2]
    d = report["first_divergence"]
    assert d["index"] == 2 and d["stored_content"] == "forged"
    assert d["replayed_content"] == real["choices"][0]["message"]["content"]
    assert result.history_matches_ticket  # node 1 committed to what it exported ...
    assert result.disputed and not result.completed  # ... which its model does not produce
    assert net.names(net.run(node2.chain.get_transaction(result.digest))) == ["StackAttestationDisputeEvent"]
    assert net.get_ticket(s).is_in_dispute is True
    # the honest replay's root differs from the committed one only through leaf 2
    honest = commit([request_leaf(payload_hash(e.request), response_hash(e.response)) for e in history.entries], 1)
    assert "0x" + honest.root.hex() == report["replayed_root"] != settled.root
