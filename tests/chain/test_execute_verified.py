"""``Localnet.execute_verified``: commands whose bytes and signature were verified in another format (the loopback
Sui node's BCS transactions) execute under the caller's digest, exactly once, with failures recorded."""

from __future__ import annotations

import pytest

from atoma_ops.chain.errors import MoveAbort, TransactionRejected


def call(localnet, function: str, *args) -> dict:
    return {"kind": "MoveCall", "package": localnet.package_id, "module": "db", "function": function,
            "arguments": [localnet.db_id, *args]}


def test_executes_once_under_the_given_digest(chain):
    ln = chain.localnet
    node = chain.wallet.resolve("node-1")
    first = ln.execute_verified("SuiDigest1", node, [call(ln, "register_node_entry")], b"bcs bytes", ["sig"])
    assert first.ok and first.digest == "SuiDigest1"
    assert [e.name for e in first.events] == ["NodeRegisteredEvent"]
    again = ln.execute_verified("SuiDigest1", node, [call(ln, "register_node_entry")], b"bcs bytes", ["sig"])
    assert again.events == first.events
    assert len([b for b in ln.badges(node) if b.kind == "NodeBadge"]) == 1
    assert ln.get_transaction("SuiDigest1").ok


def test_a_failure_is_recorded_under_the_digest_and_changes_nothing(chain):
    ln = chain.localnet
    node = chain.wallet.resolve("node-1")
    ln.execute_verified("SuiDigest2", node, [call(ln, "register_node_entry")], b"b", ["s"])
    badge = next(b for b in ln.badges(node) if b.kind == "NodeBadge")
    before = ln.state_digest()
    with pytest.raises(MoveAbort) as info:
        ln.execute_verified("SuiDigest3", node, [call(ln, "claim_funds", badge.object_id, [7])], b"b", ["s"])
    assert info.value.digest == "SuiDigest3"
    assert ln.get_transaction("SuiDigest3").status == "failure"
    with pytest.raises(MoveAbort):  # the same digest again: the recorded failure, not a new attempt
        ln.execute_verified("SuiDigest3", node, [call(ln, "register_node_entry")], b"b", ["s"])
    assert ln.state_digest() == before


def test_another_senders_badge_is_refused(chain):
    ln = chain.localnet
    node1, node2 = chain.wallet.resolve("node-1"), chain.wallet.resolve("node-2")
    ln.execute_verified("D4", node1, [call(ln, "register_node_entry")], b"b", ["s"])
    badge = next(b for b in ln.badges(node1) if b.kind == "NodeBadge")
    with pytest.raises(TransactionRejected):
        ln.execute_verified("D5", node2, [call(ln, "withdraw_fees", badge.object_id)], b"b", ["s"])
    assert ln.get_transaction("D5") is None  # refused before execution: nothing recorded


def test_simulate_reports_effects_and_keeps_nothing(chain):
    ln = chain.localnet
    node = chain.wallet.resolve("node-1")
    before = ln.state_digest()
    simulated = ln.simulate(node, [call(ln, "register_node_entry")], digest="SuiDigest6")
    assert simulated.ok and simulated.digest == "SuiDigest6" and simulated.sender == node
    assert [e.name for e in simulated.events] == ["NodeRegisteredEvent"]
    created = [c.object_id for c in simulated.object_changes if c.change == "created"]
    assert len(created) == 1
    assert ln.state_digest() == before
    assert ln.badges(node) == [] and ln.get_transaction("SuiDigest6") is None

    # Executing under the same digest creates exactly what the simulation showed.
    executed = ln.execute_verified("SuiDigest6", node, [call(ln, "register_node_entry")], b"b", ["s"])
    assert [b.object_id for b in ln.badges(node)] == created
    assert executed.events[0].parsed_json == simulated.events[0].parsed_json
    with pytest.raises(TransactionRejected):  # a recorded digest is not simulated again
        ln.simulate(node, [call(ln, "register_node_entry")], digest="SuiDigest6")


def test_simulate_returns_a_failure_and_refuses_what_execution_refuses(chain):
    ln = chain.localnet
    node1, node2 = chain.wallet.resolve("node-1"), chain.wallet.resolve("node-2")
    ln.execute_verified("D7", node1, [call(ln, "register_node_entry")], b"b", ["s"])
    badge = next(b for b in ln.badges(node1) if b.kind == "NodeBadge")
    before = ln.state_digest()
    failed = ln.simulate(node1, [call(ln, "subscribe_node_to_task", badge.object_id, "99", "1")])
    assert failed.status == "failure" and failed.events == []
    assert failed.error == {"kind": "MoveAbort", "module": "db", "code": 312012017, "name": "ETaskNotFound",
                            "function": "subscribe_node_to_task"}
    with pytest.raises(TransactionRejected):  # another sender's badge
        ln.simulate(node2, [call(ln, "withdraw_fees", badge.object_id)])
    assert ln.state_digest() == before
