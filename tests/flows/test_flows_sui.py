"""The flows on ``AtomaNetwork(kind="sui")``: every chain read and write goes through ``SuiChain`` (pysui's gRPC
client) to the loopback Sui node, a test double of a Sui full node on 127.0.0.1 backed by a localnet file.

The localnet file is also read directly, as the chain's ground truth (balances, USDC totals, recorded transactions),
and supplies the two test-only hooks a Sui network does not have: its faucet (test USDC on Sui comes from Circle's
faucet page, so the buyer's USDC is minted before the flow runs) and, on the manual-epoch localnets of the tests
that leave claims to the settlement run, advancing the epoch. The end-to-end lifecycle test uses a localnet with
short wall-clock epochs instead, so waiting for the dispute window is real waiting, as on Sui.

Money, worked by hand from atoma-protocol.md §6: a Sampling Consensus stack of 100,000 units at 1,000,000 base
units per million costs floor(100,000 × 1.212) = 121,200; claiming pays the node floor(units × 1.2) and refunds the
buyer floor((100,000 − units) × 1.2).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from atoma_ops.testing import served as kit
from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.testing.sui import BackgroundLoopbackNode
from atoma_ops.chain.digests import transaction_digest
from atoma_ops.testing.sui.txdecode import decode_transaction
from atoma_ops.home import LocalnetHome
from atoma_ops.ledger import Ledger
from atoma_ops.lifecycle import StageError, node_small_ids
from atoma_ops.wallet import Wallet
from blocks import AtomaNetwork, InferenceEngine, SuiWallet
from flows import mint_usdc, settlement_run, stack_lifecycle

STACK_UNITS = 100_000
MINTED = 10_000_000
#: wall-clock epoch of the lifecycle's localnet: a two-request replay must fit in epochs E and E + 1
EPOCH_MS = 8_000


def run(coro):
    return asyncio.run(coro)


def sui_network(home: Path, node: BackgroundLoopbackNode, **fields) -> AtomaNetwork:
    """An ``AtomaNetwork(kind="sui")`` on the loopback node serving ``home``'s chain file; the node stores and the
    ledger stay under ``home``."""
    ln = Localnet(LocalnetHome(home).chain_file)
    try:
        ids = dict(package_id=ln.package_id, db_id=ln.db_id, usdc_coin_type=ln.usdc_type)
    finally:
        ln.close()
    return AtomaNetwork(kind="sui", sui_preset="custom", home=str(home), sui_endpoint=node.url, **ids, **fields)


def sui_wallet(home: Path) -> SuiWallet:
    return SuiWallet(client_yaml=str(LocalnetHome(home).client_yaml))


def localnet_faucet(home: Path, alias: str, amount: int) -> None:
    """The localnet's own faucet (a test hook; on Sui the USDC would come from Circle's faucet page)."""
    chain = LocalnetHome(home).open()
    try:
        run(chain.faucet_mint(chain.wallet.resolve(alias), amount))
    finally:
        chain.localnet.close()


def node_small_id(home: Path, alias: str) -> int:
    chain = LocalnetHome(home).open()
    try:
        return run(node_small_ids(chain, chain.wallet.resolve(alias)))[0]
    finally:
        chain.localnet.close()


def serving_node_paid(node_fee: int, serving_id: int, attesters: list[int]) -> int:
    """What the serving node holds after its claim: the node fee, plus its own attester credit when the lottery
    drew it to attest its own stack (``claim_funds`` ends by withdrawing the claiming node's credits, §4.13)."""
    return node_fee + sum(node_fee for a in attesters if a == serving_id)  # credit = node_fee / 1 extra node


class Truth:
    """The localnet file behind the loopback node, read directly."""

    def __init__(self, home: Path):
        lh = LocalnetHome(home)
        self.ln = Localnet(lh.chain_file)
        self.aliases = Wallet.load(lh.client_yaml).aliases()

    def balance(self, alias: str) -> int:
        return self.ln.usdc_balance(self.aliases[alias])

    def conserved(self) -> bool:
        t = self.ln.total_usdc()
        return t["minted"] == t["coins"] + t["fee_treasury"] + t["communal_treasury"] + t["collateral"]

    def transactions(self) -> list[tuple[str, bytes, str]]:
        rows = self.ln.conn.execute("SELECT digest, tx_bytes, status FROM transactions ORDER BY seq").fetchall()
        return [(d, bytes(b), s) for d, b, s in rows]

    def event_count(self) -> int:
        return self.ln.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        self.ln.close()


def is_localnet_json(tx_bytes: bytes) -> bool:
    """The localnet's own transactions (publish, faucet, its CLI) are canonical JSON; Sui's are BCS."""
    try:
        return isinstance(json.loads(tx_bytes), dict)
    except (UnicodeDecodeError, ValueError):
        return False


def workload(tmp_path: Path, n: int) -> str:
    path = tmp_path / "workload.jsonl"
    prompts = ["What is 2 + 2?", "Name a colour."]
    path.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": prompts[i % 2]}], "max_tokens": 4}) + "\n" for i in range(n))
    )
    return str(path)


# ----------------------------------------------------------------------------------------------- the lifecycle
@pytest.mark.slow
def test_stack_lifecycle_on_sui_through_the_loopback_node(tmp_path):
    """Mint (already there), create a task, subscribe three nodes, buy, serve two requests on the CPU engine,
    try-settle, replay and attest, wait out the dispute window in wall-clock epochs, claim, sync the ledger —
    every chain call through SuiChain over gRPC."""
    from tasks.runtime import shared_engine

    shared_engine(InferenceEngine())  # load the CPU engine first, so the epochs below time only the chain work

    home = tmp_path / "home"
    localnet, _ = LocalnetHome(home).init(seed=7, epoch_duration_ms=EPOCH_MS)
    localnet.close()
    localnet_faucet(home, "user", MINTED)
    truth = Truth(home)
    localnet_txs = {d for d, _, _ in truth.transactions()}  # publish + the faucet mint

    try:
        with BackgroundLoopbackNode(LocalnetHome(home).chain_file) as node:
            network = sui_network(home, node, epoch_poll_s=0.2)
            summary = run(stack_lifecycle(
                key="sui", workload=workload(tmp_path, 2), mint_amount=MINTED, network=network,
                wallet=sui_wallet(home),
            ))
            calls = list(node.calls)

        units = summary["served"]["units_used"]
        assert summary["served"]["served"] == 2 and summary["served"]["refused"] == 0 and units > 0
        settled = summary["settled"]
        assert settled["status"] == "success" and settled["claimed_units"] == units
        assert len(settled["requested_attestation_nodes"]) == 1  # lottery at 1000‰, one extra node
        (attestation,) = summary["attestations"]
        assert attestation["replay"]["equal"] is True and attestation["disputed"] is False

        node_fee, refund = units * 1200 // 1000, (STACK_UNITS - units) * 1200 // 1000
        (claimed,) = summary["claims"]
        assert (claimed["stack_small_id"], claimed["node_fee"], claimed["refund"]) == (
            summary["stack_small_id"], node_fee, refund
        )

        paid = STACK_UNITS * 1212 // 1000
        assert truth.balance("user") == MINTED - paid + refund
        serving_id = node_small_id(home, summary["serving_node"])
        paid_to_node = serving_node_paid(node_fee, serving_id, settled["requested_attestation_nodes"])
        assert truth.balance(summary["serving_node"]) == paid_to_node
        assert truth.conserved()

        # the ledger was synced through SuiChain (ListEvents): every event of the chain, and the attester's credit
        earnings = {r["node_small_id"]: r for r in summary["earnings"]}
        attester = settled["requested_attestation_nodes"][0]
        assert earnings[attester]["attester_credits"] == node_fee  # node_fee / extra_nodes_count (1)
        book = Ledger(home / "ledger.duckdb")
        assert book.status()["events_indexed"] == truth.event_count()
        journal = book.actions()
        assert journal and {r["status"] for r in journal.values()} <= {"success", "already_done"}
        assert journal["faucet_mint:sui"]["status"] == "already_done"  # the flow's top-up found the USDC there

        # every write went through the loopback node: Sui BCS bytes under Sui's digest, nothing in localnet JSON
        assert {"ExecuteTransaction", "SimulateTransaction", "ListEvents", "GetEpoch"} <= set(calls)
        written = [(d, b, s) for d, b, s in truth.transactions() if d not in localnet_txs]
        assert len(written) >= 10  # task, admin setter, 3 registrations, 3 subscriptions, stack, settle, attest, claim
        assert calls.count("ExecuteTransaction") >= len(written)
        for digest, tx_bytes, status in written:
            assert not is_localnet_json(tx_bytes)
            assert transaction_digest(tx_bytes) == digest
            assert decode_transaction(tx_bytes).sender in truth.aliases.values()
            assert status == "success"
    finally:
        truth.close()


@pytest.mark.slow
def test_stack_lifecycle_on_sui_can_leave_the_claim_to_settlement_run(tmp_path):
    """``wait_and_claim=False``: the lifecycle stops after the attestation (on this localnet epochs only move when
    the test advances them, so a lifecycle that waited would time out), and the settlement run claims later."""
    home = tmp_path / "home"
    localnet, _ = LocalnetHome(home).init(seed=7)  # manual epochs
    localnet.close()
    localnet_faucet(home, "user", MINTED)
    truth = Truth(home)
    try:
        with BackgroundLoopbackNode(LocalnetHome(home).chain_file) as node:
            network, wallet = sui_network(home, node), sui_wallet(home)
            summary = run(stack_lifecycle(
                key="deferred", workload=workload(tmp_path, 1), nodes=["node-1", "node-2"],
                node_prices=[900_000, 1_000_000], mint_amount=MINTED, wait_timeout_s=5.0, wait_and_claim=False,
                network=network, wallet=wallet,
            ))
            units, serving = summary["served"]["units_used"], summary["serving_node"]
            assert summary["settled"]["claimed_units"] == units > 0
            (attestation,) = summary["attestations"]
            assert attestation["disputed"] is False
            assert summary["claims"] == [] and summary["claim_deferred"] is True
            assert truth.balance(serving) == 0

            waiting = run(settlement_run(nodes=[serving], min_value=0, network=network, wallet=wallet))
            assert [(a["action"], a["stack_small_id"]) for a in waiting] == [("wait", summary["stack_small_id"])]

            kit.advance_epoch(home)
            (claimed,) = run(settlement_run(nodes=[serving], min_value=0, network=network, wallet=wallet))

        node_fee, refund = units * 1200 // 1000, (STACK_UNITS - units) * 1200 // 1000
        assert (claimed["action"], claimed["stack_small_id"], claimed["node_fee"], claimed["refund"]) == (
            "claim (ticket)", summary["stack_small_id"], node_fee, refund
        )
        serving_id = node_small_id(home, serving)
        attesters = summary["settled"]["requested_attestation_nodes"]
        assert truth.balance(serving) == serving_node_paid(node_fee, serving_id, attesters)
        assert truth.balance("user") == MINTED - STACK_UNITS * 1212 // 1000 + refund
        assert truth.conserved()
    finally:
        truth.close()


# ----------------------------------------------------------------------------------------------- mint on Sui
def test_mint_stage_on_sui_asks_for_circles_faucet_when_short(tmp_path):
    """Sui has no faucet a script can call: a balance short of the amount fails the stage with the shortfall and
    Circle's faucet; a balance already there passes without minting anything."""
    home = tmp_path / "home"
    localnet, _ = LocalnetHome(home).init(seed=7)
    localnet.close()
    localnet_faucet(home, "user", 400_000)
    truth = Truth(home)
    try:
        with BackgroundLoopbackNode(LocalnetHome(home).chain_file) as node:
            network, wallet = sui_network(home, node), sui_wallet(home)
            with pytest.raises(StageError, match=r"400000 USDC base units, 600000 short of 1000000") as raised:
                run(mint_usdc("user", 1_000_000, network=network, wallet=wallet))
            assert "https://faucet.circle.com" in str(raised.value)

            enough = run(mint_usdc("user", 300_000, network=network, wallet=wallet))
            assert (enough.minted, enough.balance_before, enough.balance_after) == (0, 400_000, 400_000)
            assert "GetBalance" in node.calls or "ListOwnedObjects" in node.calls
        assert truth.balance("user") == 400_000 and truth.ln.usdc_minted() == 400_000
    finally:
        truth.close()


# ----------------------------------------------------------------------------------------------- settlement run
def test_settlement_run_on_sui_settles_then_claims(tmp_path):
    """Stacks served with recorded responses: the run over kind sui try-settles them, waits for the window, and
    after the epoch moves claims them all in one ``claim_funds`` — every write a Sui transaction."""
    served = kit.served_stacks(tmp_path / "ln", 3)
    truth = Truth(served.home)
    before = {d for d, _, _ in truth.transactions()}
    try:
        with BackgroundLoopbackNode(LocalnetHome(served.home).chain_file) as node:
            network, wallet = sui_network(served.home, node), sui_wallet(served.home)

            first = run(settlement_run(idle_after_s=0, min_value=0, network=network, wallet=wallet))
            settles = [a for a in first if a["action"] == "try_settle"]
            assert sorted(a["stack_small_id"] for a in settles) == served.stack_small_ids
            assert {a["status"] for a in settles} == {"success"} and {a["units"] for a in settles} == {30}
            assert {a["status"] for a in first if a["action"] == "wait"} == {"waiting"}  # window not passed

            again = run(settlement_run(idle_after_s=0, min_value=0, network=network, wallet=wallet))
            assert [a for a in again if a["action"] != "wait"] == []  # nothing settled twice

            kit.advance_epoch(served.home)
            third = run(settlement_run(idle_after_s=0, min_value=0, network=network, wallet=wallet))
            claims = [a for a in third if a["action"].startswith("claim")]
            assert sorted(a["stack_small_id"] for a in claims) == served.stack_small_ids
            assert len({a["digest"] for a in claims}) == 1  # one claim_funds for the batch
            assert {(a["node_fee"], a["refund"]) for a in claims} == {(30, 970)}  # NoSecurity: 1 unit = 1 base unit
            assert "ExecuteTransaction" in node.calls

        assert truth.balance(kit.NODE) == 3 * 30
        assert truth.conserved()
        assert truth.ln.list_stacks() == []
        written = [(d, b, s) for d, b, s in truth.transactions() if d not in before]
        assert len(written) == 3 + 1  # three try_settle_stack, one claim_funds
        assert all(not is_localnet_json(b) and transaction_digest(b) == d and s == "success" for d, b, s in written)
    finally:
        truth.close()
