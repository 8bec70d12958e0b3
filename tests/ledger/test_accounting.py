"""Earnings, refunds, treasury and the Sampling Consensus quirk, checked against figures worked out by hand from
atoma-protocol.md §6 (scenario.py's docstring shows the arithmetic)."""

from __future__ import annotations

from tests.ledger.scenario import CREDIT_NODE3, MINTED, NODE_FEE, PAID, PAID_IN, PAID_OUT, REFUND, TREASURY

NODE1, NODE2, NODE3 = 1, 2, 3


def as_dict(df, key, *cols):
    return {int(r[key]): tuple(int(r[c]) for c in cols) for r in df.to_dict(orient="records")}


def test_hand_figures_match_the_chain_itself(scenario):
    """The scenario's arithmetic is right about the chain (so the ledger is checked against true figures)."""
    net = scenario.net
    assert net.treasury() == TREASURY == 1_024_000
    assert net.usdc("user") == MINTED - PAID_IN + sum(REFUND.values())
    assert net.usdc("node-1") == NODE_FEE["A"] + NODE_FEE["C"]
    assert net.usdc("node-2") == NODE_FEE["B"]
    assert net.usdc("node-3") == NODE_FEE["D"] + CREDIT_NODE3
    net.conserved()


def test_earnings_per_node_task_epoch(synced, scenario):
    by_node = as_dict(synced.earnings(by="node"), "node_small_id", "stacks_claimed", "node_fees", "attester_credits", "total")
    assert by_node == {
        NODE1: (2, 400_000 + 600_000, 0, 1_000_000),
        NODE2: (1, 500_000, 0, 500_000),
        NODE3: (1, 100_000, 600_000, 700_000),  # its own stack D, plus the credit for attesting C
    }
    t = scenario.tasks
    by_task = as_dict(synced.earnings(by="task"), "task_small_id", "node_fees", "attester_credits", "total")
    assert by_task == {
        t["nosec"]: (400_000 + 100_000, 0, 500_000),
        t["cc"]: (500_000, 0, 500_000),
        t["sc"]: (600_000, 600_000, 1_200_000),
    }
    by_epoch = as_dict(synced.earnings(by="epoch"), "epoch", "stacks_claimed", "total")
    assert by_epoch == {0: (1, 500_000), 1: (3, 1_000_000 + 700_000)}
    grid = {(int(r["epoch"]), int(r["node_small_id"])): int(r["total"])
            for r in synced.earnings(by="epoch_node").to_dict(orient="records")}
    assert grid == {(0, NODE2): 500_000, (1, NODE1): 1_000_000, (1, NODE3): 700_000}


def test_refunds_per_buyer(synced, scenario):
    df = synced.refunds()
    assert len(df) == 1
    row = df.iloc[0]
    assert row["owner_address"] == scenario.net.addr["user"]
    assert int(row["stacks_bought"]) == 7
    assert int(row["paid"]) == PAID_IN == 4_924_000
    assert int(row["refunded"]) == 600_000 + 500_000 + 600_000 + 0
    assert int(row["net_spent"]) == PAID_IN - 1_700_000
    assert int(row["stacks_in_dispute"]) == 1
    assert int(row["paid_for_disputed"]) == PAID["E"]


def test_claims_checked_against_math_and_usdc_received(synced, scenario):
    df = synced.claims().set_index("stack_small_id")
    ids = scenario.ids
    for letter in "ABCD":
        row = df.loc[ids[letter]]
        assert int(row["node_fee"]) == NODE_FEE[letter], letter
        assert int(row["user_refund_amount"]) == REFUND[letter], letter
        assert int(row["refund_expected"]) == REFUND[letter], letter
        assert bool(row["refund_matches_math"]) and bool(row["usdc_received_matches"]), letter
    assert df.loc[ids["B"], "claim_path"] == "confidential"
    assert df.loc[ids["A"], "claim_path"] == "ticket"
    assert synced.usdc_checks(mismatches_only=True).empty
    checks = synced.usdc_checks()
    assert (checks["status"] == "ok").all()
    # node-3's claim of D: node fee 100_000 + the 600_000 credit withdrawn in the same transaction
    node3 = scenario.net.addr["node-3"]
    row = checks[(checks["address"] == node3)].iloc[0]
    assert (int(row["expected"]), int(row["actual"])) == (700_000, 700_000)
    assert sorted(row["kinds"]) == ["attester_credit_withdrawal", "node_fee"]


def test_usdc_flow_reconciles_with_chain(synced, scenario):
    flow = synced.usdc_flow()
    assert flow["paid_in"] == PAID_IN
    assert flow["paid_out_node_fees"] == 1_600_000
    assert flow["paid_out_refunds"] == 1_700_000
    assert flow["paid_out_attester_credits"] == CREDIT_NODE3
    assert flow["paid_out"] == PAID_OUT == 3_900_000
    assert flow["fee_treasury_expected"] == flow["fee_treasury_observed"] == flow["fee_treasury_chain"] == TREASURY
    assert flow["fee_treasury_drift"] == 0
    assert flow["attester_credits_credited"] == 600_000
    assert flow["attester_credits_outstanding"] == 0
    # F (settled, unclaimed): node fee floor(3e5·1e6/1e6) = 300_000, refund 0
    assert flow["open_ticket_liabilities"] == 300_000
    assert flow["paid_for_disputed_stacks"] == PAID["E"]
    assert flow["treasury_headroom"] == TREASURY - 0 - 300_000
    assert flow["communal_treasury_chain"] == 0


def test_sampling_consensus_quirk_is_visible(synced, scenario):
    """C paid 1.212× but claiming it paid the node 1.2×, refunded 1.2× and credited the attester 1.2×."""
    df = synced.sampling_consensus_payouts()
    assert list(df["stack_small_id"]) == [scenario.ids["C"]]
    row = df.iloc[0]
    assert int(row["paid_amount"]) == 1_212_000
    assert int(row["node_fee"]) == 600_000 and int(row["user_refund_amount"]) == 600_000
    assert int(row["attester_credits_total"]) == 600_000
    assert int(row["payouts"]) == 1_800_000
    assert int(row["payouts_over_paid"]) == 1_800_000 - 1_212_000
    credits = synced.node_credits().set_index("node_small_id")
    assert int(credits.loc[NODE3, "credited"]) == 600_000 and int(credits.loc[NODE3, "outstanding"]) == 0


def test_open_tickets_with_claimable_and_attestation_epochs(synced, scenario):
    df = synced.tickets().set_index("stack_small_id")
    ids = scenario.ids
    assert sorted(df.index) == sorted([ids["E"], ids["F"]])
    f = df.loc[ids["F"]]  # settled in epoch 1
    assert (int(f["settled_epoch"]), int(f["claimable_from_epoch"]), int(f["attestation_window_last_epoch"])) == (1, 2, 2)
    assert f["status"] == "waiting for epoch 2"
    e = df.loc[ids["E"]]  # settled in epoch 0, disputed
    assert (int(e["claimable_from_epoch"]), int(e["attestation_window_last_epoch"])) == (1, 1)
    assert bool(e["is_in_dispute"]) and e["status"].startswith("in_dispute")


def test_attestations_and_disputes(synced, scenario):
    ids = scenario.ids
    att = synced.attestations().set_index("stack_small_id")
    c = att.loc[ids["C"]]
    assert list(c["requested_attestation_nodes"]) == [NODE3] and list(c["already_attested_nodes"]) == [NODE3]
    assert c["status"] == "attested" and int(c["attestations_completed_epoch"]) == 0
    assert att.loc[ids["E"], "status"] == "disputed"
    disputes = synced.disputes()
    assert len(disputes) == 1
    d = disputes.iloc[0]
    assert (int(d["stack_small_id"]), int(d["attestation_node_id"]), int(d["original_node_id"])) == (ids["E"], NODE1, NODE3)
    assert d["cause"] == "proof_mismatch"


def test_mirror_tables(synced, scenario):
    ids = scenario.ids
    with synced.reader() as con:
        stacks = {r[0]: r[1:] for r in con.execute(
            "SELECT stack_small_id, is_claimed, deleted_on_chain, claim_path, expected_payment FROM stacks").fetchall()}
        tickets = con.execute(
            "SELECT stack_small_id, octet_length(stack_merkle_leaves), requested_attestation_nodes FROM stack_settlement_tickets "
            "ORDER BY 1").fetchall()
        subs = con.execute("SELECT task_small_id, node_small_id, valid FROM node_subscriptions ORDER BY 1, 2").fetchall()
        nodes = con.execute("SELECT node_small_id, node_sui_address FROM nodes ORDER BY 1").fetchall()
        types = dict(con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'stack_settlement_tickets'"
        ).fetchall())
    assert stacks[ids["A"]] == (True, True, "ticket", PAID["A"])      # claim_funds deletes it on chain
    assert stacks[ids["B"]] == (True, False, "confidential", PAID["B"])  # claim_funds_for_stacks keeps it
    assert stacks[ids["G"]] == (False, False, None, PAID["G"])
    for stack, length, _ in tickets:
        assert length == 32 * (1 + 1), stack  # 32 × (1 + cross_validation_extra_nodes_count)
    assert types["stack_merkle_leaves"] == "BLOB" and types["requested_attestation_nodes"] == "BIGINT[]"
    t = scenario.tasks
    assert subs == [(t["nosec"], 1, True), (t["nosec"], 3, True), (t["cc"], 2, True), (t["sc"], 1, True), (t["sc"], 3, True)]
    addr = scenario.net.addr
    assert nodes == [(1, addr["node-1"]), (2, addr["node-2"]), (3, addr["node-3"])]
