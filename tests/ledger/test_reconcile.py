"""Reconciliation: the mirror against chain state, drift row by row; USDC mismatches flagged, not hidden."""

from __future__ import annotations

from tests.ledger.chainproxy import ChainProxy, with_balance_changes
from tests.ledger.scenario import build

from atoma_ops.ledger import Ledger


def drift_rows(report) -> set[tuple[str, str, str]]:
    return {(r["entity"], r["key"], r["field"]) for r in report.drift.to_dict(orient="records")}


def test_clean_chain_has_no_drift(synced, scenario):
    report = scenario.net.run(synced.reconcile(scenario.net.chain, sync_first=False))
    assert report.ok, report.drift
    assert report.checked["stacks"] == 7 and report.checked["nodes"] == 3


def test_withdraw_fees_emits_no_event_so_it_shows_as_drift_then_as_a_claim_mismatch(tmp_path):
    b = build(tmp_path / "net", claim_d=False)
    try:
        net = b.net
        ledger = Ledger(tmp_path / "l.duckdb")
        net.run(ledger.sync(net.chain))
        assert net.run(ledger.reconcile(net.chain)).ok
        net.withdraw_fees("node-3")  # pays node-3 its 600_000 attester credit; no event
        report = net.run(ledger.reconcile(net.chain))
        # paid in 4_924_000 − A, B, C payouts 3_200_000 = 1_724_000 by the events; the chain paid 600_000 more
        assert drift_rows(report) == {("node", "3", "available_fee_amount"), ("treasury", "fee_treasury", "balance")}
        rows = report.drift.set_index("entity")
        assert (rows.loc["node", "ledger"], rows.loc["node", "chain"]) == (600_000, 0)
        assert (rows.loc["treasury", "ledger"], rows.loc["treasury", "chain"]) == (1_724_000, 1_124_000)
        # node-3 now claims D: the ledger expects fee 100_000 + its 600_000 credit, the chain pays 100_000
        net.claim("node-3", b.ids["D"])
        report = net.run(ledger.reconcile(net.chain))
        (row,) = report.drift.to_dict(orient="records")
        assert (row["entity"], row["ledger"], row["chain"]) == ("usdc", 700_000, 100_000)
        assert row["key"].endswith(net.addr["node-3"])
        mism = ledger.usdc_checks(mismatches_only=True)
        assert len(mism) == 1 and int(mism.iloc[0]["difference"]) == -600_000
        claims = ledger.claims().set_index("stack_small_id")
        assert not claims.loc[b.ids["D"], "usdc_received_matches"]
        assert claims.loc[b.ids["A"], "usdc_received_matches"]
    finally:
        b.close()


def test_a_payout_that_differs_from_the_protocol_math_is_flagged(tmp_path, scenario):
    """A chain whose claim transaction paid node-1 one unit less than §4.13 says (tampered effects)."""
    node1 = scenario.net.addr["node-1"]

    def shave(tx):
        if tx.balance_changes.get(node1, 0) == 1_000_000:  # node-1's claim of A and C
            changes = dict(tx.balance_changes)
            changes[node1] -= 1
            return with_balance_changes(tx, changes)
        return tx

    ledger = Ledger(tmp_path / "l.duckdb")
    chain = ChainProxy(scenario.net.chain, tx_rewrite=shave)
    scenario.net.run(ledger.sync(chain))
    mism = ledger.usdc_checks(mismatches_only=True)
    assert len(mism) == 1
    row = mism.iloc[0]
    assert (row["address"], int(row["expected"]), int(row["actual"]), row["status"]) == (node1, 1_000_000, 999_999, "mismatch")
    claims = ledger.claims().set_index("stack_small_id")
    assert not claims.loc[scenario.ids["A"], "usdc_received_matches"]
    assert not claims.loc[scenario.ids["C"], "usdc_received_matches"]
    assert claims.loc[scenario.ids["B"], "usdc_received_matches"]
    # the flow keeps the protocol figure and the observed one side by side
    flow = ledger.usdc_flow()
    assert flow["fee_treasury_observed"] - flow["fee_treasury_expected"] == 1


def test_unknown_transactions_are_flagged(tmp_path, scenario):
    ledger = Ledger(tmp_path / "l.duckdb")
    scenario.net.run(ledger.sync(ChainProxy(scenario.net.chain, tx_rewrite=lambda tx: None)))
    assert set(ledger.usdc_checks()["status"]) == {"unknown_transaction"}
    assert ledger.query("SELECT DISTINCT status FROM transactions")["status"].tolist() == ["unknown"]


def test_admin_removal_and_a_ledger_behind_the_chain_are_drift(tmp_path):
    b = build(tmp_path / "net")
    try:
        net = b.net
        ledger = Ledger(tmp_path / "l.duckdb")
        net.deprecate_task("admin", task_small_id=b.tasks["cc"])
        net.epoch(2)
        net.remove_deprecated_task_by_admin("admin", task_small_id=b.tasks["cc"])  # emits no event
        report = net.run(ledger.reconcile(net.chain))
        assert drift_rows(report) == {("task", str(b.tasks["cc"]), "exists")}
        assert "emits no event" in report.drift.iloc[0]["note"]
        net.buy(b.tasks["nosec"], 1_000, 1_000, draw=0)  # a new event the ledger has not seen
        report = net.run(ledger.reconcile(net.chain, sync_first=False))
        assert ("ledger", "cursor", "behind_chain") in drift_rows(report)
        assert ("stack", "8", "exists") in drift_rows(report)
    finally:
        b.close()


def _sc_setup(tmp_path):
    """Task 3 (SamplingConsensus) with node-1 and node-3 subscribed, lottery forced, user funded."""
    from tests.ledger.scenario import MINTED, SAMPLING, Draws, LocalnetHome, Net

    home = LocalnetHome(tmp_path / "localnet")
    home.init(seed=1)[0].close()
    draws = Draws()
    net = Net(home.open(rng=draws), draws)
    task = net.task(SAMPLING)
    for alias in ("node-1", "node-2", "node-3"):
        net.node(alias)
    net.sub("node-1", task)
    net.sub("node-3", task)
    net.force_attestation()
    net.mint("user", MINTED)
    return net, task


def test_final_attestation_check_failure_is_mirrored_without_drift(tmp_path):
    """§4.11 step 9: the last attester's leaf is written and counted, then the hash check fails ⇒ dispute. The
    leaf is in no event: the ledger infers the attester and marks the buffer incomplete rather than guess it."""
    from tests.ledger.scenario import h

    net, task = _sc_setup(tmp_path)
    try:
        stack = net.buy(task, 1_000_000, 1_000_000, draw=0)      # node-1
        proof = h(b"historical node formula")                   # not H(leaf_0 ‖ leaf_1)
        net.draws.push(0, 1)                                     # attester node-3
        net.settle("node-1", stack, 10, proof=proof, leaf=h(b"l0"))
        net.attest("node-3", stack, proof, h(b"l1"))             # same proof ⇒ final check ⇒ dispute
        ledger = Ledger(tmp_path / "l.duckdb")
        report = net.run(ledger.reconcile(net.chain))
        assert report.ok, report.drift
        d = ledger.disputes().iloc[0]
        assert d["cause"] == "final_check_failed" and int(d["attestation_node_id"]) == 3
        t = ledger.tickets(include_claimed=True).iloc[0]
        assert list(t["already_attested_nodes"]) == [3] and not t["leaves_complete"] and t["is_in_dispute"]
    finally:
        net.close()
        net.chain.localnet.close()


def test_an_attester_drawn_twice_is_credited_twice(tmp_path):
    """extra_nodes_count 2, attesters drawn with replacement = [node-3, node-3]; the same node attests twice
    (completion counts submissions); claim credits node_fee / 2 per entry: floor(5e5·1e6·1200/1e9) / 2 × 2."""
    from tests.ledger.scenario import h

    net, task = _sc_setup(tmp_path)
    try:
        net.set("set_cross_validation_extra_nodes_count", 2)
        stack = net.buy(task, 1_000_000, 1_000_000, draw=0)      # node-1, pays 1_212_000
        l0, l1 = h(b"l0"), h(b"l1")
        proof = h(l0 + l1 + bytes(32))                          # slot 2 is never written (both draws are node-3)
        net.draws.push(0, 1, 1)
        net.settle("node-1", stack, 500_000, proof=proof, leaf=l0)
        net.attest("node-3", stack, proof, l1)
        net.attest("node-3", stack, proof, l1)
        net.epoch(1)
        net.claim("node-1", stack)
        ledger = Ledger(tmp_path / "l.duckdb")
        report = net.run(ledger.reconcile(net.chain))
        assert report.ok, report.drift
        credits = ledger.query("SELECT position, node_small_id, amount FROM attester_credits ORDER BY position")
        assert credits.values.tolist() == [[0, 3, 300_000], [1, 3, 300_000]]
        assert int(ledger.node_credits().set_index("node_small_id").loc[3, "outstanding"]) == 600_000
        assert net.get_node(3).available_fee_amount == 600_000
        with ledger.reader() as con:
            (length,) = con.execute("SELECT octet_length(stack_merkle_leaves) FROM stack_settlement_tickets").fetchall()[0]
        assert length == 32 * 3
        flow = ledger.usdc_flow()
        # paid 1_212_000; node fee 600_000 + refund 600_000 paid out; 600_000 more owed to node-3 as credits
        assert (flow["fee_treasury_chain"], flow["attester_credits_outstanding"]) == (12_000, 600_000)
        assert flow["treasury_headroom"] == 12_000 - 600_000     # credits exceed what the treasury holds
    finally:
        net.close()
        net.chain.localnet.close()
