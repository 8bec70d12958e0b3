"""USDC flows to the base unit (atoma-protocol.md §6), derived by hand, with conservation checked throughout:
minted == coins + fee_treasury + communal_treasury + collateral."""

from __future__ import annotations

from tests.chain.chainkit import CONFIDENTIAL, NO_SECURITY, SAMPLING, h, honest_commitment

ROOT = h(b"stack history")
PROOF, (LEAF0, LEAF1) = honest_commitment(ROOT)
BALANCE_SHORT = ("balance", 2)


def ledger(net):
    net.conserved()
    return {a: net.usdc(a) for a in ("user", "node-1", "node-2", "node-3")} | {"treasury": net.treasury()}


def sampling_market(net, user_usdc):
    net.mint("user", user_usdc)
    t = net.task(SAMPLING)
    for alias in ("node-1", "node-2", "node-3"):
        net.node(alias)
        net.sub(alias, t, 1)
    net.force_attestation()
    return t


def test_worked_example_1(net):
    """1 USDC per 1M units, 1M units ⇒ pays 1_000_000; claim 400_000 ⇒ node 400_000, refund 600_000."""
    net.mint("user", 5_000_000)
    t = net.task(NO_SECURITY)
    net.node("node-1")
    net.sub("node-1", t, 1)
    s = net.buy(t, 1_000_000, 1_000_000)
    assert ledger(net) == {"user": 4_000_000, "node-1": 0, "node-2": 0, "node-3": 0, "treasury": 1_000_000}
    net.settle("node-1", s, 400_000)
    net.epoch()
    net.claim("node-1", s)
    assert ledger(net) == {"user": 4_600_000, "node-1": 400_000, "node-2": 0, "node-3": 0, "treasury": 0}


def test_worked_example_3_free_and_dust(net):
    net.mint("user", 10)
    t = net.task(NO_SECURITY)
    net.node("node-1")
    net.sub("node-1", t, 1)
    free = net.buy(t, 333_333, 3)  # floor(0.999999) = 0
    assert ledger(net)["user"] == 10
    net.settle("node-1", free, 111_111)
    # 700_000 per 1M, 3 units: pays floor(2.1) = 2; claim 1 ⇒ node floor(0.7) = 0, refund floor(1.4) = 1
    dusty = net.buy(t, 3, 700_000)
    assert ledger(net) == {"user": 8, "node-1": 0, "node-2": 0, "node-3": 0, "treasury": 2}
    net.settle("node-1", dusty, 1)
    net.epoch()
    r = net.claim("node-1", free, dusty)
    assert [e["user_refund_amount"] for e in net.events(r)] == ["0", "1"]
    assert ledger(net) == {"user": 9, "node-1": 0, "node-2": 0, "node-3": 0, "treasury": 1}  # the dust stays


def test_worked_example_4_sampling_consensus_with_one_attester(net):
    """Pays 1_212_000; claim 500_000 ⇒ node 600_000, refund 600_000, attester credited 600_000 (from the pool)."""
    t = sampling_market(net, 10_000_000)
    a = net.buy(t, 1_000_000, 1_000_000, draw=0)  # node 1
    net.buy(t, 1_000_000, 1_000_000, draw=2)  # node 3: another stack's payment fills the shared treasury
    assert ledger(net) == {"user": 7_576_000, "node-1": 0, "node-2": 0, "node-3": 0, "treasury": 2_424_000}
    net.draws.push(0, 1)  # lottery fires, eligible [1, 2, 3][1] = node 2
    net.settle("node-1", a, 500_000, proof=PROOF, leaf=LEAF0)
    net.attest("node-2", a, PROOF, LEAF1)
    net.epoch()
    r = net.claim("node-1", a)
    assert r.balance_changes == {net.addr["node-1"]: 600_000, net.addr["user"]: 600_000}
    assert net.events(r)[0]["user_refund_amount"] == "600000"
    n2 = net.get_node(2)
    # credited straight to available_fee_amount, bypassing the one-epoch lock of attribute_fee_to_node
    assert (n2.available_fee_amount, n2.last_fee_epoch_amount) == (600_000, 0)
    assert ledger(net) == {"user": 8_176_000, "node-1": 600_000, "node-2": 0, "node-3": 0, "treasury": 1_224_000}
    r = net.withdraw_fees("node-2")  # same epoch as the claim
    assert r.balance_changes == {net.addr["node-2"]: 600_000}
    assert net.get_node(2).available_fee_amount == 0
    assert ledger(net) == {"user": 8_176_000, "node-1": 600_000, "node-2": 600_000, "node-3": 0, "treasury": 624_000}
    # stack A paid 1_212_000 and paid out 1_800_000 (quirk §14.10)
    assert 600_000 * 3 - 1_212_000 == 588_000 == 1_212_000 - 624_000


def test_payouts_beyond_the_treasury_abort_in_balance_split(net):
    """§14.10: the selected node also attested its own stack; claim pays refund + fee + its own credit = 1_800_000
    out of a 1_212_000 treasury ⇒ ``sui::balance`` ENotEnough (2); the whole claim reverts."""
    t = sampling_market(net, 5_000_000)
    a = net.buy(t, 1_000_000, 1_000_000, draw=0)
    net.draws.push(0, 0)  # node 1 attests its own stack
    net.settle("node-1", a, 500_000, proof=PROOF, leaf=LEAF0)
    net.attest("node-1", a, PROOF, LEAF1)
    net.epoch()
    assert net.treasury() == 1_212_000
    net.fails(BALANCE_SHORT, "claim", "node-1", a)
    assert net.get_stack(a) is not None and net.get_node(1).available_fee_amount == 0
    # another purchase refills the pooled treasury; the same claim now goes through
    net.buy(t, 1_000_000, 1_000_000, draw=1)
    assert ledger(net)["treasury"] == 2_424_000
    r = net.claim("node-1", a)
    assert r.balance_changes == {net.addr["node-1"]: 1_200_000, net.addr["user"]: 600_000}
    assert ledger(net) == {"user": 3_176_000, "node-1": 1_200_000, "node-2": 0, "node-3": 0, "treasury": 624_000}


def test_attester_withdraw_beyond_the_treasury_aborts(net):
    t = sampling_market(net, 5_000_000)
    a = net.buy(t, 1_000_000, 1_000_000, draw=0)
    net.draws.push(0, 1)  # node 2 attests
    net.settle("node-1", a, 1_000_000, proof=PROOF, leaf=LEAF0)
    net.attest("node-2", a, PROOF, LEAF1)
    net.epoch()
    net.claim("node-1", a)  # node fee 1_200_000, refund 0; node 2 credited 1_200_000
    assert ledger(net) == {"user": 3_788_000, "node-1": 1_200_000, "node-2": 0, "node-3": 0, "treasury": 12_000}
    assert net.get_node(2).available_fee_amount == 1_200_000
    net.fails(BALANCE_SHORT, "withdraw_fees", "node-2")
    net.buy(t, 1_000_000, 1_000_000, draw=0)  # refill: 12_000 + 1_212_000
    net.withdraw_fees("node-2")
    assert ledger(net) == {"user": 2_576_000, "node-1": 1_200_000, "node-2": 1_200_000, "node-3": 0, "treasury": 24_000}


def test_duplicate_attester_entries_are_credited_per_entry(net):
    """requested [2, 2] (with replacement), node 2 attests twice: credited node_fee / 2 twice."""
    t = sampling_market(net, 10_000_000)
    net.set("set_cross_validation_extra_nodes_count", 2)
    proof, leaves = h(h(b"\x00" + ROOT) + h(b"\x01" + ROOT) + bytes(32)), [h(b"\x00" + ROOT), h(b"\x01" + ROOT)]
    a = net.buy(t, 1_000_000, 1_000_000, draw=0)
    net.buy(t, 1_000_000, 1_000_000, draw=2)  # refill
    net.draws.push(0, 1, 4)  # nodes 2 and 2
    net.settle("node-1", a, 500_000, proof=proof, leaf=leaves[0])
    assert net.get_ticket(a).requested_attestation_nodes == [2, 2]
    net.attest("node-2", a, proof, leaves[1])
    net.attest("node-2", a, proof, leaves[1])
    net.epoch()
    net.claim("node-1", a)
    assert net.get_node(2).available_fee_amount == 2 * (600_000 // 2)


def test_sampling_consensus_refund_for_unused_units(net):
    """Claim 0 ⇒ refund floor(1e6 × 1e6 × 1200 / 1e9) = 1_200_000 of the 1_212_000 paid; 12_000 stays."""
    t = sampling_market(net, 1_212_000)
    net.set("set_cross_validation_probability_permille", 0)
    a = net.buy(t, 1_000_000, 1_000_000, draw=0)
    net.draws.push(0)
    net.settle("node-1", a, 0)
    net.epoch()
    r = net.claim("node-1", a)
    assert r.balance_changes == {net.addr["user"]: 1_200_000}
    assert ledger(net) == {"user": 1_200_000, "node-1": 0, "node-2": 0, "node-3": 0, "treasury": 12_000}


def test_confidential_claim_at_95_percent(net):
    net.mint("user", 3_000_000)
    t = net.task(CONFIDENTIAL)
    net.node("node-1")
    net.sub("node-1", t, 1)
    s = net.buy(t, 1_000_000, 2_000_000)
    assert ledger(net)["treasury"] == 2_000_000
    net.claim_cc("node-1", [s], [950_000])
    assert ledger(net) == {"user": 1_100_000, "node-1": 1_900_000, "node-2": 0, "node-3": 0, "treasury": 0}


def test_destroy_disabled_node_pays_out_its_credit(net):
    t = sampling_market(net, 10_000_000)
    a = net.buy(t, 1_000_000, 1_000_000, draw=0)
    net.buy(t, 1_000_000, 1_000_000, draw=2)
    net.draws.push(0, 1)
    net.settle("node-1", a, 500_000, proof=PROOF, leaf=LEAF0)
    net.attest("node-2", a, PROOF, LEAF1)
    net.epoch()
    net.claim("node-1", a)
    net.permanently_disable_node("node-2")
    net.epoch(4)
    r = net.destroy_disabled_node("node-2")
    assert r.balance_changes == {net.addr["node-2"]: 600_000}
    assert ledger(net)["node-2"] == 600_000
    assert net.get_node(2) is None
