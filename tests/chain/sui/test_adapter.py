"""``SuiChain``, the Chain port on Sui through pysui's gRPC client, against the loopback Sui node.

Every test serves a fresh localnet with :class:`LoopbackSuiNode` on 127.0.0.1 and drives it only through
``SuiChain``; ``ln`` (another connection to the same chain file) supplies expected values and the test-only hooks
(faucet, epochs), which are not part of SuiChain. The full stack life runs twice, through SuiChain and through
``LocalnetChain`` on a second localnet with the same seed, and the two must agree: events, aborts and USDC.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from atoma_ops.chain import (
    ChainError,
    EventId,
    InvalidArgument,
    MoveAbort,
    MoveArithmeticError,
    TransactionRejected,
)
from atoma_ops.chain._json import dumps
from atoma_ops.chain.localnet.adapter import LocalnetChain
from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.chain.sui.adapter import SuiChain, event_json
from atoma_ops.testing.sui import LoopbackSuiNode, gas_coin_ref
from atoma_ops.testing.sui import COMPUTATION_COST, STORAGE_COST
from atoma_ops.chain.sui.networks import SuiNetwork
from atoma_ops.chain.digests import transaction_digest
from atoma_ops.testing.sui.txdecode import decode_transaction
from atoma_ops.home import LocalnetHome
from atoma_ops.core.errors import ErrorClass, classify
from atoma_ops.journal import Intent, execute_intent, execute_intents
from atoma_ops.ledger import Ledger
from atoma_ops.protocol.aborts import code_of
from atoma_ops.protocol.commitments import commit, leaves_of
from atoma_ops.wallet import Wallet

SAMPLING = 2
PRICE = 1_000_000  # USDC base units per million compute units (1 USDC)
UNITS = 1_000_000
CLAIMED = 10_000
MINTS = (1_000_000, 500_000)
HISTORY = [({"messages": [{"role": "user", "content": "hi"}]},
            {"choices": [{"message": {"role": "assistant", "content": "hello"}}], "usage": {}})]
HEX_ID = re.compile(r"^0x[0-9a-f]{64}$")


def run(home: LocalnetHome, body):
    """``await body(chain, ln, wallet)`` with a SuiChain on a loopback node serving ``home``."""

    async def main():
        ln = Localnet(home.chain_file)
        wallet = Wallet.load(home.client_yaml)
        try:
            async with LoopbackSuiNode(home.chain_file) as node:
                chain = await SuiChain.connect(network_for(node, ln), wallet)
                try:
                    return await body(chain, ln, wallet)
                finally:
                    await chain.close()
        finally:
            ln.close()

    return asyncio.run(main())


def network_for(node: LoopbackSuiNode, ln: Localnet) -> SuiNetwork:
    return SuiNetwork(name="loopback", endpoint=node.url, package_id=ln.package_id, db_id=ln.db_id,
                      usdc_coin_type=ln.usdc_type)


def tx_count(ln: Localnet) -> int:
    return ln.conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]


async def all_events(chain, limit: int) -> list:
    out, cursor = [], None
    while True:
        page = await chain.events(cursor, limit)
        assert len(page.events) <= limit
        out.extend(page.events)
        if not page.has_next_page:
            return out
        cursor = page.next_cursor


def same_effects(a, b) -> bool:
    """Two TxResults with the same content (object changes in any order)."""
    key = lambda c: c.object_id  # noqa: E731
    return (a.digest, a.status, a.sender, a.epoch, a.timestamp_ms, a.events, a.balance_changes, a.error) == (
        b.digest, b.status, b.sender, b.epoch, b.timestamp_ms, b.events, b.balance_changes, b.error
    ) and sorted(a.object_changes, key=key) == sorted(b.object_changes, key=key)


# ------------------------------------------------------------------------------------------------ the scenario
async def stack_life(chain, wallet, mint, advance) -> dict:
    """Register two nodes, a SamplingConsensus task with attestation always requested, subscribe both, buy a stack
    with two USDC coins, settle with a real commitment, attest, claim too early, advance an epoch, claim.
    ``mint(address, amount)`` and ``advance()`` are the localnet's test hooks. Returns what both paths must share."""
    aliases = {address: alias for alias, address in wallet.aliases().items()}
    aborts = []
    for alias in ("node-1", "node-2"):
        await chain.register_node_entry(alias)
    node_alias = {}
    for alias in ("node-1", "node-2"):
        [badge] = [b for b in await chain.badges(wallet.resolve(alias)) if b.kind == "NodeBadge"]
        node_alias[badge.small_id] = alias
    created = await chain.create_task_entry("admin", role=0, model_name="llama", security_level=SAMPLING)
    task = int(created.event("TaskRegisteredEvent").parsed_json["task_small_id"]["inner"])
    await chain.admin_set("admin", "set_cross_validation_probability_permille", 1000)
    for alias in ("node-1", "node-2"):
        await chain.subscribe_node_to_task(alias, task_small_id=task, price_per_one_million_compute_units=PRICE)
    user = wallet.resolve("user")
    for amount in MINTS:
        await mint(user, amount)
    assert len(await chain.usdc_coins(user)) == 2
    bought = await chain.acquire_new_stack_entry("user", task_small_id=task, num_compute_units=UNITS, price=PRICE)
    assert len(await chain.usdc_coins(user)) == 1  # merged, then paid from
    created_event = bought.event("StackCreatedEvent").parsed_json
    stack = int(created_event["stack_small_id"]["inner"])
    selected = node_alias[int(created_event["selected_node_id"]["inner"])]

    config = await chain.db_config()
    leaves = leaves_of(HISTORY)
    mine = commit(leaves, config.cross_validation_extra_nodes_count, position=0)
    settled = await chain.try_settle_stack(
        selected, stack_small_id=stack, num_claimed_compute_units=CLAIMED,
        committed_stack_proof=mine.committed_stack_proof, stack_merkle_leaf=mine.stack_merkle_leaf,
    )
    requested = settled.event("StackTrySettleEvent").parsed_json["requested_attestation_nodes"]
    assert len(requested) == 1  # probability 1000 ‰, one extra node
    attester = node_alias[int(requested[0]["inner"])]
    theirs = commit(leaves, config.cross_validation_extra_nodes_count, position=1)
    attested = await chain.submit_stack_settlement_attestation(
        attester, stack_small_id=stack, committed_stack_proof=theirs.committed_stack_proof,
        stack_merkle_leaf=theirs.stack_merkle_leaf, node_small_id=int(requested[0]["inner"]),
    )
    assert [e.name for e in attested.events] == ["NewStackSettlementAttestationEvent", "StackSettlementTicketEvent"]

    try:
        await chain.claim_funds(selected, settled_ticket_ids=[stack])
    except MoveAbort as exc:
        aborts.append((exc.name, exc.code))
    await advance()
    claimed = await chain.claim_funds(selected, settled_ticket_ids=[stack])
    try:
        await chain.subscribe_node_to_task("node-1", task_small_id=99, price_per_one_million_compute_units=1)
    except MoveAbort as exc:
        aborts.append((exc.name, exc.code))

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, str) and HEX_ID.match(value):
            return aliases.get(value, "<id>")  # addresses differ between the two wallets, ids between chains
        return value

    events = await all_events(chain, 4)
    return {
        "events": [(e.name, plain(e.parsed_json), aliases.get(e.sender)) for e in events],
        "json_text": [dumps(plain(e.parsed_json)) for e in events],  # 1.0 == 1 in Python, not in the text
        "aborts": aborts,
        "balances": {alias: await chain.usdc_balance(wallet.resolve(alias)) for alias in wallet.aliases()},
        "fee_treasury": (await chain.db_config()).fee_treasury,
        "available_fees": {alias: (await chain.get_node(n)).available_fee_amount for n, alias in node_alias.items()},
        "claim_balance_changes": {aliases[a]: v for a, v in claimed.balance_changes.items()},
        "selected": selected,
        "attester": attester,
        "stack_gone": (await chain.get_stack(stack), await chain.get_ticket(stack)),
    }


def test_stack_life_through_sui_matches_the_localnet(localnet_home, tmp_path):
    async def body(chain, ln, wallet):
        async def mint(address, amount):
            ln.faucet_mint(address, amount)

        async def advance():
            ln.advance_epoch()

        before = tx_count(ln)
        summary = await stack_life(chain, wallet, mint, advance)
        # The early claim and the missing task were refused by the simulation: 12 transactions (2 of them mints),
        # no failure recorded.
        assert tx_count(ln) == before + 12
        assert ln.conn.execute("SELECT COUNT(*) FROM transactions WHERE status = 'failure'").fetchone()[0] == 0
        # What SuiChain read equals the localnet's own view of the same chain file.
        assert await all_events(chain, 3) == ln.events(None, 1000).events
        for (digest,) in ln.conn.execute("SELECT digest FROM transactions ORDER BY seq").fetchall():
            assert same_effects(await chain.get_transaction(digest), ln.get_transaction(digest)), digest
        return summary

    sui = run(localnet_home, body)

    twin_home = LocalnetHome(tmp_path / "twin")
    twin, _ = twin_home.init(seed=7)
    twin.close()

    async def on_localnet():
        chain = twin_home.open()
        try:
            async def mint(address, amount):
                await chain.faucet_mint(address, amount)

            return await stack_life(chain, chain.wallet, mint, chain.advance_epoch)
        finally:
            await chain.close()

    local = asyncio.run(on_localnet())
    assert sui == local

    # By hand (atoma-protocol.md §4.9, §4.13, §6): the user pays floor(1e6 × 1e6 / 1e6) × 1212 / 1000 = 1_212_000
    # from 1_500_000; the node is owed floor(10_000 × 1e6 × 1200 / 1e9) = 12_000, the user is refunded
    # floor(990_000 × 1e6 × 1200 / 1e9) = 1_188_000, the attester is credited node_fee / 1 = 12_000.
    assert sui["aborts"] == [("EStackDisputePeriodIsNotOver", 312012032), ("ETaskNotFound", 312012017)]
    paid = 1_212_000
    selected, attester = sui["selected"], sui["attester"]
    assert sui["balances"]["user"] == sum(MINTS) - paid + 1_188_000 == 1_476_000
    if attester == selected:  # its credit is withdrawn by the same claim
        assert sui["balances"][selected] == 24_000 and sui["fee_treasury"] == 0
        assert sui["claim_balance_changes"] == {"user": 1_188_000, selected: 24_000}
    else:
        assert sui["balances"][selected] == 12_000 and sui["balances"][attester] == 0
        assert sui["available_fees"][attester] == 12_000 and sui["fee_treasury"] == 12_000
        assert sui["claim_balance_changes"] == {"user": 1_188_000, selected: 12_000}
    assert sui["stack_gone"] == (None, None)
    assert [name for name, _, _ in sui["events"]] == [
        "PublishedEvent", "NodeRegisteredEvent", "NodeRegisteredEvent", "TaskRegisteredEvent",
        "NodeSubscribedToTaskEvent", "NodeSubscribedToTaskEvent", "StackCreatedEvent", "StackTrySettleEvent",
        "NewStackSettlementAttestationEvent", "StackSettlementTicketEvent", "StackSettlementTicketClaimedEvent",
    ]
    claimed = sui["events"][-1][1]
    assert (claimed["num_claimed_compute_units"], claimed["user_refund_amount"]) == (str(CLAIMED), "1188000")
    proof = commit(leaves_of(HISTORY), 1).committed_stack_proof
    assert sui["events"][7][1]["committed_stack_proof"] == list(proof)  # vector<u8> as numbers, as on the localnet


# ------------------------------------------------------------------------------------------------ failures
def test_aborts_keep_their_names_and_digests(localnet_home):
    async def body(chain, ln, wallet):
        await chain.register_node_entry("node-1")
        await chain.register_node_entry("node-2")
        await chain.create_task_entry("admin", role=0)
        ln.faucet_mint(wallet.resolve("user"), 2_000_000)
        await chain.subscribe_node_to_task("node-1", task_small_id=1, price_per_one_million_compute_units=PRICE)
        bought = await chain.acquire_new_stack_entry("user", task_small_id=1, num_compute_units=UNITS, price=PRICE)
        stack = int(bought.event("StackCreatedEvent").parsed_json["stack_small_id"]["inner"])
        mine = commit(leaves_of(HISTORY), 1)
        await chain.try_settle_stack("node-1", stack_small_id=stack, num_claimed_compute_units=CLAIMED,
                                     committed_stack_proof=mine.committed_stack_proof,
                                     stack_merkle_leaf=mine.stack_merkle_leaf)

        # A simulation that aborts raises before anything is signed: no digest, nothing recorded.
        count, state = tx_count(ln), ln.state_digest()
        with pytest.raises(MoveAbort) as early:
            await chain.claim_funds("node-1", settled_ticket_ids=[stack])
        assert (early.value.name, early.value.code, early.value.function) == (
            "EStackDisputePeriodIsNotOver", 312012032, "claim_funds")
        assert early.value.digest is None
        with pytest.raises(MoveAbort) as missing:
            await chain.subscribe_node_to_task("node-2", task_small_id=42, price_per_one_million_compute_units=1)
        assert (missing.value.name, missing.value.module, missing.value.digest) == ("ETaskNotFound", "db", None)
        assert (tx_count(ln), ln.state_digest()) == (count, state)

        # The same call built without a simulation aborts on execution: recorded under its digest.
        prepared = await chain.build_transaction("node-1", "claim_funds", {"settled_ticket_ids": [stack]})
        signature = chain.sign(prepared)
        with pytest.raises(MoveAbort) as recorded:
            await chain.execute(prepared, signature)
        assert (recorded.value.name, recorded.value.code, recorded.value.digest) == (
            "EStackDisputePeriodIsNotOver", code_of("EStackDisputePeriodIsNotOver"), prepared.digest)
        failed = await chain.get_transaction(prepared.digest)
        assert failed.status == "failure" and failed.events == [] and failed.object_changes == []
        assert failed.error == ln.get_transaction(prepared.digest).error == {
            "kind": "MoveAbort", "module": "db", "code": 312012032, "name": "EStackDisputePeriodIsNotOver",
            "function": "claim_funds",
        }
        with pytest.raises(MoveAbort) as again:  # the same bytes again: the first outcome, not a second execution
            await chain.execute(prepared, signature)
        assert again.value.digest == prepared.digest and tx_count(ln) == count + 1

        # State changing between prepare and execute: prepared while the task was live, executed once deprecated.
        subscribe = await chain.prepare("node-2", "subscribe_node_to_task",
                                        {"task_small_id": 1, "price_per_one_million_compute_units": PRICE})
        await chain.deprecate_task("admin", task_small_id=1)
        with pytest.raises(MoveAbort) as late:
            await chain.execute(subscribe, chain.sign(subscribe))
        assert (late.value.name, late.value.digest) == ("ETaskDeprecated", subscribe.digest)
        assert ln.get_transaction(subscribe.digest).status == "failure"

        # u64 overflow (price × units): Sui's ARITHMETIC_ERROR, at simulation and, unsimulated, on execution.
        overflow = {"task_small_id": 1, "num_compute_units": 4, "price": 2**63}
        with pytest.raises(MoveArithmeticError) as simulated:
            await chain.acquire_new_stack_entry("user", **overflow)
        assert simulated.value.digest is None
        built = await chain.build_transaction("user", "acquire_new_stack_entry", overflow)
        with pytest.raises(MoveArithmeticError) as executed:
            await chain.execute(built, chain.sign(built))
        assert executed.value.digest == built.digest and str(executed.value) == str(simulated.value)
        assert (await chain.get_transaction(built.digest)).error == ln.get_transaction(built.digest).error
        assert ln.get_transaction(built.digest).error["kind"] == "ArithmeticError"

        # A framework abort keeps its module: claiming a ticket that does not exist.
        with pytest.raises(MoveAbort) as framework:
            await chain.claim_funds("node-2", settled_ticket_ids=[77])
        assert (framework.value.module, framework.value.code, framework.value.name) == (
            "dynamic_field", 1, "EFieldDoesNotExist")

    run(localnet_home, body)


def test_refusals_replays_and_gas(localnet_home):
    async def body(chain, ln, wallet):
        node3 = wallet.resolve("node-3")
        # Budget from the simulation: ceil(1.5 × (computation + storage)), under the cap; gas paid with the
        # sender's current coin at the reference price.
        prepared = await chain.prepare("node-3", "register_node_entry", {})
        tx = decode_transaction(prepared.tx_bytes)
        assert tx.gas.budget == (COMPUTATION_COST + STORAGE_COST) * 3 // 2 == 4_500_000
        assert tx.gas.price == 1000 and [(r.object_id, r.version) for r in tx.gas.payment] == [
            gas_coin_ref(ln, node3)[:2]]
        assert (tx.sender, prepared.sender, prepared.function) == (node3, node3, "register_node_entry")

        # Signed by another key: refused, nothing recorded.
        count = tx_count(ln)
        with pytest.raises(TransactionRejected) as forged:
            await chain.execute(prepared, wallet.sign("node-2", prepared.tx_bytes))
        assert forged.value.digest is None and tx_count(ln) == count
        assert await chain.get_transaction(prepared.digest) is None

        # Identical signed bytes twice: one execution, the same effects.
        signature = chain.sign(prepared)
        first = await chain.execute(prepared, signature)
        second = await chain.execute(prepared, signature)
        assert first.digest == second.digest == prepared.digest and same_effects(first, second)
        assert tx_count(ln) == count + 1 and len(await chain.badges(node3)) == 1
        assert same_effects(first, ln.get_transaction(prepared.digest))

        # Two transactions prepared before either ran share the gas coin version: the second is stale.
        one = await chain.prepare("node-3", "withdraw_fees", {})
        two = await chain.prepare("node-3", "permanently_disable_node", {})
        assert decode_transaction(one.tx_bytes).gas.payment == decode_transaction(two.tx_bytes).gas.payment
        await chain.execute(one, chain.sign(one))
        with pytest.raises(TransactionRejected, match="stale"):
            await chain.execute(two, chain.sign(two))
        assert ln.get_transaction(two.digest) is None
        # Prepared afresh, it reads the new gas coin version and goes through.
        assert (await chain.permanently_disable_node("node-3")).ok

        # Unknown or malformed digests.
        assert await chain.get_transaction(transaction_digest(b"never sent")) is None
        assert await chain.get_transaction("not a digest") is None
        assert await chain.get_transaction(first.digest) == first

    run(localnet_home, body)


def test_argument_checks_match_the_localnet_adapter(localnet_home):
    async def body(chain, ln, wallet):
        local = LocalnetChain(Localnet(localnet_home.chain_file), wallet)
        try:
            for alias in ("node-1", "node-1", "node-2"):
                await chain.register_node_entry(alias)
            cases = [
                ("node-1", "no_such_function", {}),
                ("admin", "create_task_entry", {"role": 0}),  # is_public missing
                ("admin", "create_task_entry", {"role": -1, "is_public": True}),
                ("admin", "create_task_entry", {"role": 0, "is_public": True, "model_name": "modèle"}),
                ("admin", "create_task_entry", {"role": 0, "is_public": True, "colour": "red"}),
                ("node-1", "withdraw_fees", {}),  # two NodeBadges: say which
                ("node-1", "withdraw_fees", {"node_small_id": 3}),  # node-2's id
                ("node-1", "withdraw_fees", {"node_small_id": -1}),
                ("user", "withdraw_fees", {}),  # no badge at all
                ("user", "acquire_new_stack_entry", {"task_small_id": 1, "num_compute_units": 1, "price": 1}),
                ("node-2", "withdraw_fees", {"node_badge": "not an id"}),
                ("admin", "whitelist_nodes_for_task", {"task_small_id": 1, "nodes": "1,2"}),
                ("node-2", "try_settle_stack", {"stack_small_id": 1, "num_claimed_compute_units": 2**64,
                                                "committed_stack_proof": b"", "stack_merkle_leaf": b""}),
            ]
            for sender, function, args in cases:
                with pytest.raises(InvalidArgument) as ours:
                    await chain.prepare(sender, function, args)
                with pytest.raises(InvalidArgument) as theirs:
                    await local.prepare(sender, function, args)
                assert str(ours.value) == str(theirs.value), (function, args)
            # A hint picks among several badges, on both.
            [n1, n2] = sorted(b.small_id for b in await chain.badges(wallet.resolve("node-1")))
            picked = await chain.withdraw_fees("node-1", node_small_id=n2)
            assert picked.ok and ln.get_transaction(picked.digest).status == "success"
            badge = next(b for b in await chain.badges(wallet.resolve("node-1")) if b.small_id == n2)
            assert next(c for c in picked.object_changes if c.object_id == badge.object_id).change == "mutated"
            # Badge and coin reads equal the localnet's.
            for alias in wallet.aliases():
                address = wallet.resolve(alias)
                assert await chain.badges(address) == ln.badges(address)
                assert await chain.usdc_coins(address) == ln.usdc_coins(address)
            # An explicit object that does not exist is refused before signing, as the localnet refuses it.
            with pytest.raises(TransactionRejected, match="does not exist"):
                await chain.prepare("node-2", "withdraw_fees", {"node_badge": "0x" + "ab" * 32})
            # Another sender's badge: the node refuses the simulation.
            with pytest.raises(TransactionRejected, match="owned by"):
                await chain.prepare("node-2", "withdraw_fees", {"node_badge": badge.object_id})
        finally:
            await local.close()

    run(localnet_home, body)


# ------------------------------------------------------------------------------------------------ reads
def test_reads_and_event_paging_equal_the_localnet(localnet_home):
    async def body(chain, ln, wallet):
        for alias in ("node-1", "node-2", "node-3"):
            await chain.register_node_entry(alias)
        await chain.create_task_entry("admin", role=0, model_name="llama", minimum_reputation_score=5)
        await chain.subscribe_node_to_task("node-2", task_small_id=1, price_per_one_million_compute_units=7)
        await chain.subscribe_node_to_task("node-1", task_small_id=1, price_per_one_million_compute_units=9)
        ln.advance_epoch(2)
        assert await chain.current_epoch() == ln.current_epoch() == 2
        assert await chain.db_config() == ln.db_config()
        assert await chain.get_task(1) == ln.get_task(1)
        assert await chain.subscriptions(1) == ln.subscriptions(1) and len(ln.subscriptions(1)) == 2
        assert await chain.get_node(2) == ln.get_node(2)
        missing = (await chain.get_task(2), await chain.get_node(9), await chain.get_stack(1), await chain.get_ticket(1))
        assert missing == (None, None, None, None)
        # gas: the loopback node gives every address one virtual SUI coin of 10**12 MIST
        assert await chain.gas_balance(wallet.resolve("node-1")) == 10**12

        expected = ln.events(None, 1000).events
        assert len(expected) == 7
        for limit in (1, 2, 7, 50):
            assert await all_events(chain, limit) == expected
        # the same JSON text too (1.0 == 1 in Python, not in a stored row): u16 fields come back as integers
        assert [dumps(e.parsed_json) for e in await all_events(chain, 50)] == [dumps(e.parsed_json) for e in expected]
        assert dumps(expected[4].parsed_json["role"]) == '{"inner":0}'
        page = await chain.events(None, 7)
        assert page.has_next_page is False and page.next_cursor == expected[-1].id
        empty = await chain.events(page.next_cursor, 5)
        assert (empty.events, empty.next_cursor, empty.has_next_page) == ([], expected[-1].id, False)

        # A cursor this SuiChain never listed (persisted by another process): located through its checkpoint.
        fresh = SuiChain(chain.network, wallet, chain.client)
        middle = await fresh.events(expected[2].id, 3)
        assert middle.events == expected[3:6] and middle.has_next_page is True
        with pytest.raises(ChainError, match="unknown event cursor"):
            await fresh.events(EventId(transaction_digest(b"never sent"), 0), 3)
        with pytest.raises(InvalidArgument):
            await fresh.events(None, 0)

    run(localnet_home, body)


def test_event_json_takes_the_ports_shapes():
    # protobuf numbers come back as floats; a node may render vector<u8> as base64
    node = {"role": {"inner": 1.0}, "committed_stack_proof": "AQID", "stack_merkle_leaf": [4.0, 5.0],
            "num": "12", "ok": True, "model_name": None, "stack_small_id": {"inner": "3"}}
    plain = event_json(node)
    assert plain == {"role": {"inner": 1}, "committed_stack_proof": [1, 2, 3], "stack_merkle_leaf": [4, 5],
                     "num": "12", "ok": True, "model_name": None, "stack_small_id": {"inner": "3"}}
    assert dumps(plain["role"]) == '{"inner":1}' and dumps(plain["stack_merkle_leaf"]) == "[4,5]"
    assert event_json({"committed_stack_proof": "not base64!"}) == {"committed_stack_proof": "not base64!"}


# ------------------------------------------------------------------------------------------------ journal, transport
def test_intent_journal_over_sui_and_a_dropped_node(localnet_home, tmp_path):
    async def body(chain, ln, wallet):
        ledger = Ledger(tmp_path / "ledger.duckdb")
        intent = Intent("register:node-3", "register_node_entry", "node-3")
        count = tx_count(ln)
        first = await execute_intent(chain, ledger, intent)
        assert first.status == "success" and first.tx is not None and first.tx.event("NodeRegisteredEvent")
        assert ln.get_transaction(first.digest).status == "success"
        row = (await asyncio.to_thread(ledger.actions, ["register:node-3"]))["register:node-3"]
        assert (row["status"], row["digest"], row["attempts"]) == ("success", first.digest, 1)
        again = await execute_intent(chain, ledger, intent)
        assert (again.status, again.digest, again.tx) == ("success", first.digest, None)
        assert tx_count(ln) == count + 1 and len(await chain.badges(wallet.resolve("node-3"))) == 1

        # Two writes of one sender in one batch: on Sui each pins the gas coin's version, so the journal signs and
        # submits them one at a time (a batch signed up front would make the second stale).
        batch = [Intent("withdraw:node-3", "withdraw_fees", "node-3"),
                 Intent("disable:node-3", "permanently_disable_node", "node-3")]
        results = await execute_intents(chain, ledger, batch)
        assert [r.status for r in results] == ["success", "success"]
        assert all(ln.get_transaction(r.digest).status == "success" for r in results)
        assert tx_count(ln) == count + 3

    run(localnet_home, body)

    # No node answers when the signed bytes go out: not a chain error (the journal calls it in doubt).
    async def unreachable():
        ln = Localnet(localnet_home.chain_file)
        wallet = Wallet.load(localnet_home.client_yaml)
        gone = await LoopbackSuiNode(localnet_home.chain_file).start()
        await gone.stop()  # nothing listens on its port any more
        try:
            async with LoopbackSuiNode(localnet_home.chain_file) as node:
                chain = await SuiChain.connect(network_for(node, ln), wallet)
                lost = await SuiChain.connect(network_for(gone, ln), wallet, timeout_s=5)
                try:
                    prepared = await chain.prepare("node-2", "register_node_entry", {})
                    with pytest.raises(Exception) as failed:
                        await lost.execute(prepared, chain.sign(prepared))
                    assert not isinstance(failed.value, ChainError), failed.value
                    assert classify(failed.value) is not ErrorClass.TERMINAL
                    assert ln.get_transaction(prepared.digest) is None
                    assert (await chain.execute(prepared, chain.sign(prepared))).ok  # the same bytes, later
                finally:
                    await lost.close()
                    await chain.close()
        finally:
            ln.close()

    asyncio.run(unreachable())


def test_connect_refuses_plaintext_to_another_host(localnet_home):
    ln = Localnet(localnet_home.chain_file)
    wallet = Wallet.load(localnet_home.client_yaml)
    try:
        network = SuiNetwork(name="x", endpoint="http://example.com:9000", package_id=ln.package_id,
                             db_id=ln.db_id, usdc_coin_type=ln.usdc_type)

        async def connect():
            return await SuiChain.connect(network, wallet)

        with pytest.raises(ValueError, match="loopback"):
            asyncio.run(connect())
        with pytest.raises(InvalidArgument, match="db_id"):
            asyncio.run(SuiChain.connect(SuiNetwork("y", "http://127.0.0.1:1", ln.package_id, "nope",
                                                    ln.usdc_type), wallet))
    finally:
        ln.close()
