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
