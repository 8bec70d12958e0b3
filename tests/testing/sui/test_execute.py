"""The loopback Sui full node's write side: ExecuteTransaction, SimulateTransaction, GetTransaction, ListEvents.

Transactions are built offline with ``txbuild.move_call_transaction``, signed with the localnet home's wallet and
sent through pysui's own gRPC client, so what is checked is what pysui decodes from the wire. ``ln`` is the
localnet (another connection) for expected values and state digests.
"""

from __future__ import annotations

import asyncio
import base64

import pysui.sui.sui_common.sui_commands as cmd
import pysui.sui.sui_grpc.pgrpc_requests as rn
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sp

from atoma_ops.chain.sui.client import pysui_client_for
from atoma_ops.testing.sui import (
    GAS_COIN_BALANCE,
    GAS_COIN_TYPE,
    REFERENCE_GAS_PRICE,
    LoopbackSuiNode,
    gas_coin_id,
    gas_coin_ref,
)
from atoma_ops.testing.sui.objects import object_digest
from atoma_ops.testing.sui import COMPUTATION_COST, STORAGE_COST
from atoma_ops.testing.sui.events import event_cursor, parse_event_cursor
from atoma_ops.testing.sui.execute import ReplayedDraws
from atoma_ops.chain.sui.txbuild import GasConfig, OwnedRef, SharedRef, move_call_transaction
from atoma_ops.chain.digests import transaction_digest
from atoma_ops.chain.types import TxResult
from atoma_ops.protocol import abi
from atoma_ops.protocol.aborts import code_of
from atoma_ops.wallet import normalize_address

MOVE_ABORT = sp.ExecutionErrorExecutionErrorKind.MOVE_ABORT
CREATED = sp.ChangedObjectIdOperation.CREATED
END = sp.QueryEndReason


def serve(home, body):
    """``await body(node, client, ln, wallet)`` against a loopback node on ``home`` (client as ``user``)."""

    async def main():
        chain = home.open()
        try:
            async with LoopbackSuiNode(home.chain_file) as node:
                async with pysui_client_for(node.url, chain.wallet, active="user") as client:
                    return await body(node, client, chain.localnet, chain.wallet)
        finally:
            await chain.close()

    return asyncio.run(main())


def owned(ln, object_id: str) -> OwnedRef:
    version = ln.get_object(object_id)["version"]
    return OwnedRef(object_id, version, object_digest(object_id, version))


def build(ln, sender: str, function: str, args=None, objects=None, *, gas: OwnedRef | None = None,
          package_id: str | None = None) -> bytes:
    """A signed-ready transaction paying with ``sender``'s current gas coin unless ``gas`` is given."""
    takes_random = any(p.type == abi.RANDOM for p in abi.ENTRY_FUNCTIONS[function])
    return move_call_transaction(
        sender, package_id or ln.package_id, function, args or {},
        db=SharedRef(ln.db_id, 1, True),
        random=SharedRef(abi.RANDOM_OBJECT_ID, 1, False) if takes_random else None,
        objects=objects or {},
        gas=GasConfig(sender, REFERENCE_GAS_PRICE, 50_000_000, (gas or OwnedRef(*gas_coin_ref(ln, sender)),)),
    )


async def execute(client, tx: bytes, signatures: list[str]):
    return await client.execute(
        command=cmd.ExecuteTransaction(tx_bytestr=base64.b64encode(tx).decode(), sig_array=signatures)
    )


async def executed(client, wallet, sender: str, tx: bytes) -> sp.ExecutedTransaction:
    result = await execute(client, tx, [wallet.sign(sender, tx)])
    assert result.is_ok(), result.result_string
    return result.result_data


async def simulate(client, tx: bytes):
    return await client.execute(command=cmd.SimulateTransaction(tx_bytestr=base64.b64encode(tx).decode(),
                                                                gas_selection=False))


async def list_events(client, **kwargs) -> list[sp.ListEventsResponse]:
    result = await client.execute_grpc_request(request=rn.ListEvents(**kwargs))
    assert result.is_ok(), result.result_string
    return [frame async for frame in result.result_data]


def tx_count(ln) -> int:
    return ln.conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]


def seq_of(ln, digest: str) -> int:
    return ln.conn.execute("SELECT seq FROM transactions WHERE digest = ?", (digest,)).fetchone()[0]


# ------------------------------------------------------------------------------------------------ gas coins
def test_every_address_has_one_gas_coin_whose_version_counts_its_transactions(localnet_home):
    async def body(node, client, ln, wallet):
        admin, node1 = wallet.resolve("admin"), wallet.resolve("node-1")
        # The admin published the package: one transaction sent, gas coin at version 2. Asked for by id first
        # (a fresh node finds the owner among the localnet's senders).
        admin_gas = await client.execute(command=cmd.GetObject(object_id=gas_coin_id(admin)))
        assert admin_gas.is_ok(), admin_gas.result_string
        obj = admin_gas.result_data
        assert (obj.object_type, obj.version, obj.balance) == (GAS_COIN_TYPE, 2, GAS_COIN_BALANCE)
        assert (obj.owner.address, obj.digest) == (admin, object_digest(gas_coin_id(admin), 2))
        assert gas_coin_ref(ln, admin) == (gas_coin_id(admin), 2, obj.digest)

        listed = (await client.execute(command=cmd.GetObjectsForType(owner=node1, object_type=GAS_COIN_TYPE))).result_data
        assert [(o.object_id, o.version) for o in listed.objects] == [(gas_coin_id(node1), 1)]
        everything = (await client.execute(command=cmd.GetObjectsOwnedByAddress(owner=node1))).result_data
        assert [o.object_id for o in everything.objects] == [gas_coin_id(node1)]
        batch = (await client.execute(command=cmd.GetMultipleObjects(object_ids=[gas_coin_id(node1)]))).result_data
        assert batch.objects[0].object.version == 1
        balance = (await client.execute(command=cmd.GetAddressCoinBalance(owner=node1))).result_data.balance
        assert balance.balance == GAS_COIN_BALANCE

        # A sent transaction (failed ones too) moves the version on; the id and balance stay.
        await executed(client, wallet, node1, build(ln, node1, "register_node_entry"))
        failed = await executed(client, wallet, node1, build(
            ln, node1, "subscribe_node_to_task", {"task_small_id": 9, "price_per_one_million_compute_units": 1},
            {"node_badge": owned(ln, ln.badges(node1)[0].object_id)}))
        assert failed.effects.status.success is False
        assert gas_coin_ref(ln, node1)[:2] == (gas_coin_id(node1), 3)
        after = (await client.execute(command=cmd.GetObject(object_id=gas_coin_id(node1)))).result_data
        assert (after.version, after.balance) == (3, GAS_COIN_BALANCE)
        assert gas_coin_id(node1) != gas_coin_id(admin) and gas_coin_id(node1) == gas_coin_id(node1.upper()[2:])

    serve(localnet_home, body)


# ------------------------------------------------------------------------------------------------ execute
def test_register_node_through_execute_transaction_and_replay(localnet_home):
    async def body(node, client, ln, wallet):
        node1 = wallet.resolve("node-1")
        tx = build(ln, node1, "register_node_entry")
        signature = wallet.sign(node1, tx)
        first = await executed(client, wallet, node1, tx)

        assert first.digest == transaction_digest(tx)
        assert first.effects.status.success and first.effects.status.error is None
        [badge] = ln.badges(node1)
        [event] = first.events.events
        assert (event.event_type, event.sender, event.package_id, event.module) == (
            f"{ln.package_id}::db::NodeRegisteredEvent", node1, ln.package_id, "db")
        assert event.json.to_dict() == {"badge_id": badge.object_id, "node_small_id": {"inner": str(badge.small_id)}}
        assert first.checkpoint == seq_of(ln, first.digest)
        assert first.transaction.bcs.value == tx
        assert first.signatures[0].bcs.value == base64.b64decode(signature)
        gas = (await client.execute(command=cmd.GetMultipleObjects(object_ids=[gas_coin_id(node1)]))).result_data
        assert gas.objects[0].object.version == 2

        # The badge is the sender's now, as the effects say.
        badges = (await client.execute(command=cmd.GetObjectsForType(
            owner=node1, object_type=f"{ln.package_id}::db::NodeBadge"))).result_data.objects
        assert [(b.object_id, b.version) for b in badges] == [(badge.object_id, badge.version)]
        created = [c for c in first.effects.changed_objects if c.id_operation == CREATED]
        assert [(c.object_id, c.output_version, c.output_digest, c.output_owner.address) for c in created] == [
            (badge.object_id, badge.version, object_digest(badge.object_id, badge.version), node1)]
        db_change = next(c for c in first.effects.changed_objects if c.object_id == ln.db_id)
        assert db_change.output_version == ln.get_object(ln.db_id)["version"] == first.effects.lamport_version
        gas_object = first.effects.gas_object
        assert (gas_object.object_id, gas_object.input_version, gas_object.output_version) == (gas_coin_id(node1), 1, 2)
        assert (first.effects.gas_used.computation_cost, first.effects.gas_used.storage_cost) == (
            COMPUTATION_COST, STORAGE_COST)

        # The same bytes again: the same answer, nothing executed twice.
        count = tx_count(ln)
        again = await executed(client, wallet, node1, tx)
        assert again.to_dict() == first.to_dict()
        assert len(ln.badges(node1)) == 1 and tx_count(ln) == count

    serve(localnet_home, body)


def test_move_aborts_come_back_as_failed_effects_and_replay(localnet_home):
    async def body(node, client, ln, wallet):
        node1 = wallet.resolve("node-1")
        await executed(client, wallet, node1, build(ln, node1, "register_node_entry"))
        badge = ln.badges(node1)[0].object_id
        before = ln.state_digest()

        tx = build(ln, node1, "subscribe_node_to_task", {"task_small_id": 99, "price_per_one_million_compute_units": 5},
                   {"node_badge": owned(ln, badge)})
        failed = await executed(client, wallet, node1, tx)
        status = failed.effects.status
        assert status.success is False and status.error.kind == MOVE_ABORT
        assert status.error.abort.abort_code == code_of("ETaskNotFound") == 312012017
        location = status.error.abort.location
        assert (location.package, location.module, location.function_name) == (
            ln.package_id, "db", "subscribe_node_to_task")
        assert status.error.command == 0 and failed.events.events == []
        assert ln.get_transaction(failed.digest).status == "failure"
        assert ln.state_digest() == before  # only the failure record and the gas coin's version
        assert gas_coin_ref(ln, node1)[1] == 3
        assert (await executed(client, wallet, node1, tx)).to_dict() == failed.to_dict()

        # A framework abort: claiming a ticket that does not exist borrows a missing dynamic field.
        claim = await executed(client, wallet, node1, build(
            ln, node1, "claim_funds", {"settled_ticket_ids": [7]}, {"node_badge": owned(ln, badge)}))
        abort = claim.effects.status.error.abort
        assert (abort.abort_code, abort.location.module, abort.location.package) == (
            1, "dynamic_field", normalize_address("0x2"))
        assert abort.location.function_name is None

    serve(localnet_home, body)


def test_refused_transactions_record_nothing(localnet_home):
    async def body(node, client, ln, wallet):
        node1, node2 = wallet.resolve("node-1"), wallet.resolve("node-2")
        await executed(client, wallet, node1, build(ln, node1, "register_node_entry"))
        badge = ln.badges(node1)[0].object_id
        before, count = ln.state_digest(), tx_count(ln)
        stale_gas = OwnedRef(gas_coin_id(node1), 1, object_digest(gas_coin_id(node1), 1))
        badge_ref = owned(ln, badge)
        withdraw = build(ln, node1, "withdraw_fees", objects={"node_badge": badge_ref})

        cases = [
            ("signed by", withdraw, [wallet.sign(node2, withdraw)]),  # forged: another key signed
            ("invalid signature", withdraw, [wallet.sign(node1, withdraw + b"\x00")]),
            ("exactly one signature", withdraw, []),
            ("cannot decode", b"\x00not a transaction", [wallet.sign(node1, b"\x00not a transaction")]),
            ("stale", build(ln, node1, "withdraw_fees", objects={"node_badge": badge_ref}, gas=stale_gas), None),
            ("stale", build(ln, node1, "withdraw_fees", objects={
                "node_badge": OwnedRef(badge, badge_ref.version + 1, object_digest(badge, badge_ref.version + 1))}), None),
            ("does not exist", build(ln, node1, "withdraw_fees", objects={
                "node_badge": OwnedRef("0x" + "ab" * 32, 1, object_digest("0x" + "ab" * 32, 1))}), None),
            ("not the Atoma package", build(ln, node1, "register_node_entry", package_id=ln.usdc_package_id), None),
            ("sender's gas coin", build(ln, node1, "register_node_entry", gas=OwnedRef(*gas_coin_ref(ln, node2))), None),
            ("not by the sender", build(ln, node2, "withdraw_fees", objects={"node_badge": badge_ref}), None),
        ]
        for expected, tx, signatures in cases:
            signer = node2 if expected == "not by the sender" else node1
            result = await execute(client, tx, signatures if signatures is not None else [wallet.sign(signer, tx)])
            assert not result.is_ok(), expected
            assert expected in str(result.result_string), (expected, result.result_string)
            assert ln.get_transaction(transaction_digest(tx)) is None
        assert (ln.state_digest(), tx_count(ln)) == (before, count)

        # The genuine transaction still goes through afterwards.
        assert (await executed(client, wallet, node1, withdraw)).effects.status.success

    serve(localnet_home, body)


# ------------------------------------------------------------------------------------------------ simulate
def test_simulate_reports_success_or_abort_and_changes_nothing(localnet_home):
    async def body(node, client, ln, wallet):
        node2 = wallet.resolve("node-2")
        before, gas = ln.state_digest(), gas_coin_ref(ln, node2)
        register = build(ln, node2, "register_node_entry")

        result = await simulate(client, register)  # unsigned
        assert result.is_ok(), result.result_string
        simulated = result.result_data.transaction
        assert simulated.effects.status.success
        assert [e.event_type for e in simulated.events.events] == [f"{ln.package_id}::db::NodeRegisteredEvent"]
        used = simulated.effects.gas_used
        assert (used.computation_cost, used.storage_cost, used.storage_rebate) == (COMPUTATION_COST, STORAGE_COST, 0)
        assert (ln.state_digest(), gas_coin_ref(ln, node2), ln.badges(node2)) == (before, gas, [])
        assert ln.get_transaction(transaction_digest(register)) is None

        foreign = build(ln, node2, "create_task_entry",
                         {"role": 0, "model_name": None, "security_level": None, "minimum_reputation_score": None,
                          "is_public": True},
                         {"badge": owned(ln, ln.badges(wallet.resolve("admin"))[0].object_id)})
        refused = await simulate(client, foreign)  # node-2 does not own the manager badge: refused, not run
        assert not refused.is_ok() and "owned by" in str(refused.result_string)

        # Execution afterwards creates the badge the simulation showed.
        created = [c.object_id for c in simulated.effects.changed_objects if c.id_operation == CREATED]
        await executed(client, wallet, node2, register)
        assert [b.object_id for b in ln.badges(node2)] == created
        badge = owned(ln, created[0])
        missing = build(ln, node2, "subscribe_node_to_task",
                        {"task_small_id": 5, "price_per_one_million_compute_units": 1}, {"node_badge": badge})
        before = ln.state_digest()
        status = (await simulate(client, missing)).result_data.transaction.effects.status
        assert (status.success, status.error.kind, status.error.abort.abort_code) == (
            False, MOVE_ABORT, code_of("ETaskNotFound"))
        assert ln.state_digest() == before and ln.get_transaction(transaction_digest(missing)) is None
        stale = await simulate(client, register)  # already executed: its gas coin reference is stale now
        assert not stale.is_ok() and "stale" in str(stale.result_string)

    serve(localnet_home, body)


# ------------------------------------------------------------------------------------------------ reads
def test_get_transaction_round_trip(localnet_home):
    async def body(node, client, ln, wallet):
        node1 = wallet.resolve("node-1")
        ok = await executed(client, wallet, node1, build(ln, node1, "register_node_entry"))
        failed = await executed(client, wallet, node1, build(
            ln, node1, "subscribe_node_to_task", {"task_small_id": 3, "price_per_one_million_compute_units": 1},
            {"node_badge": owned(ln, ln.badges(node1)[0].object_id)}))
        for sent in (ok, failed):
            got = (await client.execute(command=cmd.GetTransaction(digest=sent.digest))).result_data
            assert got.digest == sent.digest and got.checkpoint == sent.checkpoint
            assert got.effects.to_dict() == sent.effects.to_dict()
            assert got.events.to_dict() == sent.events.to_dict()
            assert got.transaction.bcs.value == sent.transaction.bcs.value
            assert got.timestamp == sent.timestamp
        assert got.effects.status.error.abort.abort_code == code_of("ETaskNotFound")

        # A transaction made through the localnet's own adapter reads the same way (no BCS to show).
        chain = localnet_home.open()
        try:
            native = await chain.create_task_entry("admin", role=0)
        finally:
            await chain.close()
        got = (await client.execute(command=cmd.GetTransaction(digest=native.digest))).result_data
        assert [e.event_type.rsplit("::", 1)[-1] for e in got.events.events] == [e.name for e in native.events]
        assert got.transaction.bcs is None and got.effects.status.success

        unknown = transaction_digest(b"never sent")
        assert (await client.execute(command=cmd.GetTransaction(digest=unknown))).result_data is None
        raw = await client.execute_grpc_request(request=rn.GetTransaction(digest=unknown))
        assert not raw.is_ok() and "not found" in str(raw.result_string)

    serve(localnet_home, body)


def test_list_events_pages_across_transactions(localnet_home):
    async def body(node, client, ln, wallet):
        senders = [wallet.resolve(a) for a in ("node-1", "node-2", "node-3")]
        for sender in senders:
            await executed(client, wallet, sender, build(ln, sender, "register_node_entry"))
        expected = [(e.id.tx_digest, e.id.event_seq, e.type) for e in ln.events(limit=1000).events]
        assert len(expected) == 4  # PublishedEvent + three registrations

        seen, pages, after = [], 0, None
        while True:
            frames = await list_events(client, options=sp.QueryOptions(limit=2, after=after))
            pages += 1
            items = [f.event for f in frames if f.event is not None]
            assert len(items) <= 2 and frames[-1].end is not None
            seen += [(e.transaction_digest, e.event_index, e.event_type) for e in items]
            assert all(e.checkpoint == seq_of(ln, e.transaction_digest) for e in items)
            after = frames[-1].watermark.cursor
            if frames[-1].end.reason == END.LEDGER_TIP:
                break
            assert frames[-1].end.reason == END.ITEM_LIMIT
        assert (seen, pages) == (expected, 3)
        assert parse_event_cursor(after)[0] == seq_of(ln, expected[-1][0])

        # Resuming from the tip's cursor yields only what happened since.
        fourth = wallet.resolve("user")
        new = await executed(client, wallet, fourth, build(ln, fourth, "register_node_entry"))
        frames = await list_events(client, options=sp.QueryOptions(after=after))
        assert [f.event.transaction_digest for f in frames if f.event] == [new.digest]

        def literal(**kw) -> sp.EventFilter:
            negated = kw.pop("negated", False)
            return sp.EventFilter(terms=[sp.EventTerm(literals=[sp.EventLiteral(negated=negated, **kw)])])

        registered = f"{ln.package_id}::db::NodeRegisteredEvent"
        by_type = await list_events(client, event_filter=literal(event_type=sp.EventTypeFilter(event_type=registered)))
        assert len([f for f in by_type if f.event]) == 4
        not_type = await list_events(client, event_filter=literal(
            event_type=sp.EventTypeFilter(event_type=registered), negated=True))
        assert [f.event.event_type.rsplit("::", 1)[-1] for f in not_type if f.event] == ["PublishedEvent"]
        by_sender = await list_events(client, event_filter=literal(sender=sp.SenderFilter(address=senders[1])))
        assert [f.event.sender for f in by_sender if f.event] == [senders[1]]
        module = await list_events(client, event_filter=literal(emit_module=sp.EmitModuleFilter(module=f"{ln.package_id}::db")))
        assert len([f for f in module if f.event]) == 5
        other = await list_events(client, event_filter=literal(emit_module=sp.EmitModuleFilter(module=ln.usdc_package_id)))
        assert [f.event for f in other] == [None] and other[-1].end.reason == END.LEDGER_TIP

        # Checkpoint ranges: start inclusive, end exclusive.
        second = seq_of(ln, expected[2][0])
        ranged = await list_events(client, start_checkpoint=second, end_checkpoint=second + 1)
        assert [f.event.transaction_digest for f in ranged if f.event] == [expected[2][0]]
        assert ranged[-1].end.reason == END.CHECKPOINT_BOUND
        assert ranged[-1].watermark.cursor == event_cursor(second, 2**32 - 1)

    serve(localnet_home, body)


def test_replayed_draws_give_an_execution_what_its_simulation_drew():
    source = iter(range(100))
    draws = ReplayedDraws(lambda: next(source))
    ok = TxResult(digest="d", status="success", sender="0x1", epoch=0, timestamp_ms=0)
    failed = TxResult(digest="d", status="failure", sender="0x1", epoch=0, timestamp_ms=0)
    seen: list[list[int]] = []

    def simulation(count: int, result: TxResult):
        return lambda: (seen.append([draws() for _ in range(count)]), result)[1]

    assert draws.simulate(simulation(2, ok)) is ok
    assert draws.simulate(simulation(3, ok)) is ok  # simulated again: the same draws, then one more
    assert [draws(), draws()] == [0, 1]  # the execution gets them again, in order
    assert draws.simulate(simulation(2, failed)) is failed  # 2 (kept from before), 3 (new): spent, not replayed
    assert [draws(), draws()] == [4, 5]
    assert seen == [[0, 1], [0, 1, 2], [2, 3]]
