"""A whole stack's life through the CLI, every number derived by hand from atoma-protocol.md §4.9, §4.13 and §6.

Two tasks: task 1 NoSecurity, task 2 SamplingConsensus with the cross-validation lottery switched off
(probability 0 ‰), so no attestation node is ever drawn and every payout is predictable.
"""

from __future__ import annotations

import base64
import json

from atoma_ops.wallet import Wallet

from tests.cli.clikit import Cli, balance_changes, event, events, proof, sid

MINT = 5_000_000
BID = 1_000_000  # the user's price per 1M compute units


def test_stack_lifecycle_through_the_cli(tmp_path):
    c = Cli(tmp_path / "home")

    # init, human mode: the home, ids and aliases with addresses are printed.
    init = c.human("localnet", "init", "--seed", "1")
    aliases = Wallet.load(c.home / "client.yaml").aliases()
    assert str(c.home.absolute()) in init.stdout
    for alias, address in aliases.items():
        assert alias in init.stdout and address in init.stdout
    user, node1, node2 = aliases["user"], aliases["node-1"], aliases["node-2"]

    tx = c.ok("usdc", "mint", "--amount", MINT, "--to", "user")
    assert balance_changes(tx) == {user: MINT}

    # Task 1 (NoSecurity), by the admin (the active address after init).
    tx = c.ok("db", "create-task-entry", "--role", "0", "--model-name", "meta-llama/Llama-3.3-70B-Instruct", "--is-public")
    ev = event(tx, "TaskRegisteredEvent")
    assert sid(ev["task_small_id"]) == 1 and sid(ev["security_level"]) == 0
    assert ev["model_name"] == "meta-llama/Llama-3.3-70B-Instruct" and ev["minimum_reputation_score"] is None
    badge = [o for o in tx["objectChanges"] if o["change"] == "created"]
    assert len(badge) == 1 and badge[0]["type"].endswith("::db::TaskBadge") and badge[0]["owner"] == aliases["admin"]

    # Admin setter, then task 2 (SamplingConsensus).
    c.ok("db", "set-cross-validation-probability-permille", "--value", "0")
    assert c.ok("localnet", "status")["config"]["cross_validation_probability_permille"] == 0
    tx = c.ok("db", "create-task-entry", "--role", "0", "--security-level", "2", "--is-public")
    assert sid(event(tx, "TaskRegisteredEvent")["task_small_id"]) == 2
    task2 = c.ok("db", "get-task", "--task-small-id", "2")
    assert task2["security_level"] == 2 and task2["is_public"] is True and task2["model_name"] is None

    # Nodes 1 and 2; node-1 asks more than the user will bid on task 1, so only node 2 is eligible there.
    assert sid(event(c.ok("db", "register-node", address="node-1"), "NodeRegisteredEvent")["node_small_id"]) == 1
    assert sid(event(c.ok("db", "register-node", address="node-2"), "NodeRegisteredEvent")["node_small_id"]) == 2
    c.ok("db", "subscribe-node-to-task", "--task-small-id", "1", "--price-per-one-million-compute-units", "2000000", address="node-1")
    c.ok("db", "subscribe-node-to-task", "--task-small-id", "1", "--price-per-one-million-compute-units", "500000", address="node-2")
    tx = c.ok("db", "subscribe-node-to-task", "--task-small-id", "2", "--price-per-one-million-compute-units", "1000000", address="node-2")
    ev = event(tx, "NodeSubscribedToTaskEvent")
    assert (sid(ev["node_small_id"]), sid(ev["task_small_id"]), ev["max_num_compute_units"]) == (2, 2, "1000000")
    subs = c.ok("db", "get-subscriptions", "--task-small-id", "1")["subscriptions"]
    assert [(s["node_small_id"], s["price_per_one_million_compute_units"]) for s in subs] == [(1, 2_000_000), (2, 500_000)]

    # Stack 1 on task 1 (human mode): 600_000 units at the user's bid 1_000_000 -> pays floor(1e6 × 6e5 / 1e6)
    # = 600_000 (its own bid, not node 2's ask of 500_000 which would be 300_000).
    out = c.human("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "600000", "--price", BID, address="user")
    assert "stack 1 → node 2" in out.stdout
    assert "-0.600000" in out.stdout
    stack = c.ok("db", "get-stack", "--stack-small-id", "1")
    assert stack == {
        "stack_small_id": 1,
        "owner": user,
        "price_per_one_million_compute_units": BID,
        "num_compute_units": 600_000,
        "selected_node_id": 2,
        "task_small_id": 1,
        "is_claimed": False,
    }
    assert c.ok("usdc", "balance", "user")["base_units"] == MINT - 600_000

    # Stack 2 on task 2 (SamplingConsensus): total_cost = 500_000; pays floor(500_000 × (1200 + 12) / 1000) = 606_000.
    tx = c.ok("db", "acquire-new-stack-entry", "--task-small-id", "2", "--num-compute-units", "500000", "--price", BID, address="user")
    ev = event(tx, "StackCreatedEvent")
    assert (sid(ev["stack_small_id"]), sid(ev["selected_node_id"]), ev["owner"]) == (2, 2, user)
    assert balance_changes(tx) == {user: -606_000}

    # node-2 settles both stacks, 250_000 units each; no attestation node is drawn (probability 0).
    for stack_id in (1, 2):
        tx = c.ok(
            "db", "try-settle-stack", "--stack-small-id", stack_id, "--num-claimed-compute-units", "250000",
            "--committed-stack-proof", proof(f"proof {stack_id}"), "--stack-merkle-leaf", proof(f"leaf {stack_id}"),
            address="node-2",
        )
        ev = event(tx, "StackTrySettleEvent")
        assert ev["requested_attestation_nodes"] == [] and ev["num_claimed_compute_units"] == "250000"
        assert bytes(ev["committed_stack_proof"]).hex() == proof(f"proof {stack_id}")[2:]
    ticket = c.ok("db", "get-ticket", "--stack-small-id", "2")
    assert ticket["dispute_settled_at_epoch"] == 1 and ticket["committed_stack_proof"] == proof("proof 2")
    # leaves buffer = leaf ‖ 32 zero bytes (cross_validation_extra_nodes_count = 1)
    assert ticket["stack_merkle_leaves_vector"] == proof("leaf 2") + "00" * 32

    assert c.ok("localnet", "advance-epoch") == {"epoch": 1}

    # One claim for both (comma list). Stack 1 (NoSecurity): node 250_000, refund 350_000.
    # Stack 2 (SamplingConsensus, ×1200/1000): node floor(250_000 × 1e6 × 1200 / 1e9) = 300_000, refund 300_000.
    tx = c.ok("db", "claim-funds", "--settled-ticket-ids", "1,2", address="node-2")
    claimed = events(tx, "StackSettlementTicketClaimedEvent")
    assert [(sid(e["stack_small_id"]), e["num_claimed_compute_units"], e["user_refund_amount"]) for e in claimed] == [
        (1, "250000", "350000"),
        (2, "250000", "300000"),
    ]
    assert balance_changes(tx) == {user: 350_000 + 300_000, node2: 250_000 + 300_000}
    claim_digest = tx["digest"]

    assert c.ok("usdc", "balance", "user") == {"address": user, "base_units": 4_444_000, "usdc": "4.444000"}
    assert c.ok("usdc", "balance", "node-2")["base_units"] == 550_000
    assert c.ok("usdc", "balance", node1)["base_units"] == 0

    # Claimed (ticket path) stacks are deleted from chain state.
    assert c.fail("db", "get-stack", "--stack-small-id", "1")["kind"] == "NotFound"
    assert c.fail("db", "get-ticket", "--stack-small-id", "1")["kind"] == "NotFound"

    # Paid 1_206_000, paid out 1_200_000: 6_000 of SamplingConsensus surcharge stays in the fee treasury.
    status = c.ok("localnet", "status")
    assert status["treasuries"] == {"fee_treasury": 6_000, "communal_treasury": 0}
    assert status["usdc"] == {"minted": MINT, "coins": MINT - 6_000, "fee_treasury": 6_000, "communal_treasury": 0, "collateral": 0}
    assert status["counters"] == {"next_node_small_id": 3, "next_task_small_id": 3, "next_stack_small_id": 3}
    assert status["epoch"] == 1 and status["open_stacks"] == 0

    # The recorded transaction reads back the same.
    again = c.ok("db", "get-transaction", "--digest", claim_digest)
    assert again["status"] == "success" and again["events"] == tx["events"]

    # Events, paged 5 at a time with the cursor flags, in execution order.
    names, cursor = [], []
    while True:
        page = c.ok("db", "list-events", "--limit", "5", *cursor)
        names += [e["type"].rsplit("::", 1)[1] for e in page["data"]]
        if not page["hasNextPage"]:
            break
        cursor = ["--cursor-tx-digest", page["nextCursor"]["txDigest"], "--cursor-event-seq", page["nextCursor"]["eventSeq"]]
    assert names == (
        ["PublishedEvent", "TaskRegisteredEvent", "TaskRegisteredEvent", "NodeRegisteredEvent", "NodeRegisteredEvent"]
        + ["NodeSubscribedToTaskEvent"] * 3
        + ["StackCreatedEvent"] * 2
        + ["StackTrySettleEvent"] * 2
        + ["StackSettlementTicketClaimedEvent"] * 2
    )

    badges = c.ok("db", "badges", "user")
    assert badges["address"] == user
    assert sorted((b["kind"], b["small_id"]) for b in badges["badges"]) == [("StackBadge", 1), ("StackBadge", 2)]
    assert [(b["kind"], b["small_id"]) for b in c.ok("db", "badges", address="node-2")["badges"]] == [("NodeBadge", 2)]

    # A few human reads, so their output is scanned below too.
    c.human("localnet", "status")
    c.human("db", "list-events")
    c.human("usdc", "coins", "user")
    c.human("db", "get-node", "--node-small-id", "2")

    # No key material from the keystore in anything the CLI printed.
    keystore = json.loads((c.home / "sui.keystore").read_text())
    assert len(keystore) == 5
    printed = "\n".join(c.outputs)
    for entry in keystore:
        raw = base64.b64decode(entry)
        secret = raw[1:]
        assert len(secret) == 32
        for form in (entry, secret.hex(), base64.b64encode(secret).decode(), base64.b64encode(secret).decode().rstrip("=")):
            assert form not in printed
    assert "suiprivkey" not in printed
