"""AtomaDb's tables read through ``atoma_ops.chain.sui.tables`` from the loopback node, against the localnet's reads.

State is made on a fresh localnet with the localnet adapter (``net``: tasks of every security level, three
nodes, subscriptions including an unsubscribe and a re-subscribe, stacks bought, settled, attested, disputed and
claimed). The loopback node then serves that chain file on 127.0.0.1 and pysui's gRPC client reads every table
entry the way it would read a real full node: AtomaDb, then each entry at its derived dynamic field id. Every
value must be EQUAL to what ``LocalnetChain`` reads directly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

import pysui.sui.sui_common.sui_commands as cmd
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sp
from grpclib.const import Status
from pysui.sui.sui_bcs import bcs

from atoma_ops.chain.sui import table_reads as R
from atoma_ops.chain.sui import tables as T
from atoma_ops.chain.sui.client import pysui_client_for
from atoma_ops.testing.sui import BackgroundLoopbackNode
from atoma_ops.testing.sui.entries import table_uid
from tests.chain.chainkit import CONFIDENTIAL, NO_SECURITY, P32, SAMPLING, USDC

OBJECT = sp.OwnerOwnerKind.OBJECT


# ------------------------------------------------------------------------------------------------ id derivation
# Sui's own snapshot vectors. ``derive_object_id(parent, T, key)`` is ``derive_dynamic_field_id`` with the key type
# wrapped in ``0x2::derived_object::DerivedObjectKey<T>`` (MystenLabs/sui crates/sui-types/src/derived_object.rs,
# tests test_derive_object_snapshot / _with_struct_key_snapshot / _with_generic_struct_key_snapshot; the same
# addresses are asserted on chain in the framework's derived_object_tests.move).
SUI_VECTORS = [
    ("0x2", "0x2::derived_object::DerivedObjectKey<vector<u8>>", bytes([3]) + b"foo",
     "0xa2b411aa9588c398d8e3bc97dddbdd430b5ded7f81545d05e33916c3ca0f30c3"),
    # DemoStruct { value: u64 } = 1: a one-u64 struct key, the shape of NodeSmallId { inner: u64 }.
    ("0x2", "0x2::derived_object::DerivedObjectKey<0x2::derived_object_tests::DemoStruct>", (1).to_bytes(8, "little"),
     "0x20c58d8790a5d2214c159c23f18a5fdc347211e511186353e785ad543abcea6b"),
    ("0x2", "0x2::derived_object::DerivedObjectKey<0x2::derived_object_tests::GenericStruct<u64>>",
     (1).to_bytes(8, "little"), "0xb497b8dcf1e297ae5fa69c040e4a08ef8240d5373bbc9d6b686ffbd7dfe04cbe"),
    # The TypeScript SDK's deriveDynamicFieldID unit test (test/unit/utils/dynamic-fields.test.ts of Mysten's
    # ts-sdks, as copied in its forks): a Table<u64, _> entry, key 0.
    ("0xbef336120c90707eb387d72dde9c0e9f6fea37b9f02b1ba8de271c64ad7b6db0", "u64", (0).to_bytes(8, "little"),
     "0x6552700b707460a3f48d8348f7531c4bba7a9546b4cf445ba265ad2ba06b1bb3"),
]


@pytest.mark.parametrize("parent,key_type,key_bcs,expected", SUI_VECTORS)
def test_dynamic_field_id_matches_sui_vectors(parent, key_type, key_bcs, expected):
    assert T.dynamic_field_id(parent, key_type, key_bcs) == expected


def test_dynamic_field_id_of_an_object_table_key_computed_by_hand():
    """HAND-COMPUTED vector (no published one exists for this key type): the bytes of the formula's definition
    assembled literally here, for the key this project derives most, ``Wrapper<<pkg>::db::TaskSmallId>`` = 7."""
    parent = bytes.fromhex("11" * 32)
    pkg = bytes.fromhex("ab" * 32)
    key = (7).to_bytes(8, "little")
    tag = (
        b"\x07" + bytes(31) + b"\x02"            # Struct, address 0x2
        + b"\x14" + b"dynamic_object_field"      # module (ULEB length 20)
        + b"\x07" + b"Wrapper"                   # name
        + b"\x01"                                # one type parameter:
        + b"\x07" + pkg + b"\x02db" + b"\x0bTaskSmallId" + b"\x00"   # Struct <pkg>::db::TaskSmallId, no params
    )
    expected = "0x" + hashlib.blake2b(b"\xf0" + parent + (8).to_bytes(8, "little") + key + tag, digest_size=32).hexdigest()
    key_type = T.dynamic_object_field_key_type(T.small_id_type("0x" + "ab" * 32, "TaskSmallId"))
    assert T.type_tag_bcs(key_type) == tag
    assert T.dynamic_field_id("0x" + "11" * 32, key_type, T.small_id_bcs(7)) == expected


@pytest.mark.parametrize("type_str", [
    "u8", "u16", "u64", "bool",
    "0x2::object::ID", "0xabc::db::NodeSmallId", "0x2::dynamic_object_field::Wrapper<0xabc::db::TaskSmallId>",
])
def test_type_tag_bcs_agrees_with_pysui(type_str):
    assert T.type_tag_bcs(type_str) == bytes(bcs.TypeTag.type_tag_from(type_str).serialize())


def test_type_tag_bcs_where_pysui_differs():
    # Variant indices of move_core_types' TypeTag: Address = 4, Vector = 6, U256 = 10. pysui's parser has no
    # ``address``, and it writes ``vector<T>`` with an extra length byte (06 01 01 for vector<u8>); the Sui snapshot
    # vector for ``DerivedObjectKey<vector<u8>>`` above holds with 06 01.
    assert (T.type_tag_bcs("address"), T.type_tag_bcs("u256")) == (b"\x04", b"\x0a")
    assert T.type_tag_bcs("vector<u8>") == b"\x06\x01"
    assert T.type_tag_bcs("vector<vector<u64>>") == b"\x06\x06\x02"


def test_type_tag_bcs_rejects_malformed_types():
    for bad in ("", "vector<u8", "0x2::m", "0x2::m::S<u8", "u64 u64", "0xzz::m::S"):
        with pytest.raises(ValueError):
            T.type_tag_bcs(bad)


# ------------------------------------------------------------------------------------------------ parsers
def test_parsers_are_strict_about_sui_json_shapes():
    node = {
        "was_disabled_in_epoch": None, "collateral": "0", "last_fee_epoch": "3", "last_fee_epoch_amount": "0",
        "available_fee_amount": "12", "reputation_score": {"inner": 50.0},
    }
    assert T.parse_node(1, node).available_fee_amount == 12
    with pytest.raises(T.UnexpectedObject, match="decimal string"):
        T.parse_node(1, {**node, "available_fee_amount": 12})  # u64 must be a string
    with pytest.raises(T.UnexpectedObject, match="u8"):
        T.parse_node(1, {**node, "reputation_score": {"inner": 256}})
    with pytest.raises(T.UnexpectedObject, match="missing field"):
        T.parse_node(1, {k: v for k, v in node.items() if k != "collateral"})

    ticket = {
        "id": "0x" + "cd" * 32, "stack_small_id": {"inner": "4"}, "selected_node_id": {"inner": "1"},
        "num_claimed_compute_units": "10", "requested_attestation_nodes": [], "dispute_settled_at_epoch": "1",
        "committed_stack_proof": base64.b64encode(b"\x01" * 32).decode(),
        "stack_merkle_leaves_vector": base64.b64encode(b"\x02" * 64).decode(),
        "already_attested_nodes": [], "is_in_dispute": False,
    }
    assert T.parse_ticket(4, ticket).committed_stack_proof == b"\x01" * 32
    with pytest.raises(T.UnexpectedObject, match="base64"):
        T.parse_ticket(4, {**ticket, "committed_stack_proof": [1] * 32})  # vector<u8> is base64, not an array
    with pytest.raises(T.UnexpectedObject, match="for stack 4"):
        T.parse_ticket(5, ticket)


# ------------------------------------------------------------------------------------------------ against the node
@pytest.fixture
def net(localnet_net):
    """State is made through the localnet adapter only: what is compared here is the node's reads of it."""
    return localnet_net


@pytest.fixture
def world(net):
    """Every kind of table entry, including deleted ones. Returns the small ids involved."""
    net.mint("user", 100 * USDC)
    n1, n2, n3 = net.node("node-1"), net.node("node-2"), net.node("node-3")
    plain = net.task(NO_SECURITY)
    sampling = net.task(SAMPLING, model=None, min_score=10, role=1)
    confidential = net.task(CONFIDENTIAL)
    private = net.task(NO_SECURITY, is_public=False)
    gone = net.task(NO_SECURITY)
    net.whitelist_nodes_for_task("admin", task_small_id=private, nodes=[n2, n3])
    net.sub("node-1", plain, 1_000)
    net.sub("node-2", plain, 2_000)
    net.sub("node-1", sampling, 500)
    net.sub("node-2", sampling, 600)
    net.sub("node-1", confidential, 700)
    net.sub("node-2", private, 800)
    net.unsubscribe_node_from_task("node-2", task_small_id=plain)  # its id stays in the TableVec (§4.8)
    net.sub("node-2", plain, 2_500)  # … and is appended again: [n1, n2, n2]
    net.deprecate_task("admin", task_small_id=private)
    net.deprecate_task("admin", task_small_id=gone)

    open_stack = net.buy(plain, draw=0)  # n1, settled below, left in its dispute window
    net.settle("node-1", open_stack, 600_000)
    net.force_attestation()
    disputed = net.buy(sampling, draw=0)
    net.draws.push(0, 1)  # the lottery fires, the attestation node is eligible[1] = n2
    net.settle("node-1", disputed, 900_000)
    # Same proof, but the leaves do not hash to it: recorded as attested, then disputed (§4.11).
    net.attest("node-2", disputed, P32, b"\x07" * 32)
    cc = net.buy(confidential, draw=0)
    net.claim_cc("node-1", [cc], [400_000])  # claimed but kept (quirk §14.13)
    claimed = net.buy(plain, draw=1)  # n2
    net.settle("node-2", claimed, 300_000)
    never_settled = net.buy(plain, draw=0)
    net.epoch(1)
    net.claim("node-2", claimed)  # stack and ticket removed
    net.remove_deprecated_task("admin", task_small_id=gone)
    net.permanently_disable_node("node-3")
    return {
        "nodes": (n1, n2, n3), "tasks": (plain, sampling, confidential, private, gone),
        "stacks": (open_stack, disputed, cc, claimed, never_settled), "claimed": claimed, "gone": gone,
        "disputed": disputed,
    }


def read(net, body):
    """``await body(client, node)`` against a loopback node on ``net``'s chain file, from a fresh event loop."""
    home_file = net.ln.path

    async def main():
        with BackgroundLoopbackNode(home_file) as node:
            async with pysui_client_for(node.url, net.chain.wallet, active="user") as client:
                return await body(client, node)

    return asyncio.run(main())


def test_every_table_entry_equals_the_localnet_read(net, world):
    ln = net.ln

    async def body(client, node):
        config, tables = await R.read_db(client, ln.db_id)
        assert config == ln.db_config()
        assert (tables.db_id, tables.type_package_id) == (ln.db_id, ln.package_id)
        assert (tables.nodes.size, tables.tasks.size, tables.stacks.size, tables.stack_settlement_tickets.size) == (
            3, 4, 4, 2,
        )
        assert tables.tasks.is_object_table and not tables.stacks.is_object_table
        assert tables.models.size == 0

        seen = {"node": 0, "task": 0, "stack": 0, "ticket": 0, "subscription": 0}
        for n in range(config.next_node_small_id + 1):
            got = await R.read_node(client, tables.nodes, n)
            assert got == ln.get_node(n)
            seen["node"] += got is not None
        for t in range(config.next_task_small_id + 1):
            got = await R.read_task(client, tables.tasks, t)
            assert got == ln.get_task(t)
            subs = await R.read_subscriptions(client, tables.tasks, t)
            assert subs == ln.subscriptions(t)
            seen["task"] += got is not None
            seen["subscription"] += len(subs)
        for s in range(config.next_stack_small_id + 1):
            stack, ticket = await R.read_stack(client, tables.stacks, s), await R.read_ticket(
                client, tables.stack_settlement_tickets, s
            )
            assert stack == ln.get_stack(s)
            assert ticket == ln.get_ticket(s)
            seen["stack"] += stack is not None
            seen["ticket"] += ticket is not None
        assert seen == {"node": 3, "task": 4, "stack": 4, "ticket": 2, "subscription": 6}
        return node.calls

    calls = read(net, body)
    assert {"GetObject", "BatchGetObjects"} <= set(calls)

    # The entries that make the comparison meaningful really are in that state.
    plain, sampling, confidential, private, _ = world["tasks"]
    n1, n2, n3 = world["nodes"]
    assert ln.get_task(plain).subscribed_nodes_small_ids == [n1, n2, n2]
    assert ln.get_task(sampling).model_name is None and ln.get_task(sampling).minimum_reputation_score == 10
    assert ln.get_task(private).whitelisted_nodes == [n2, n3] and ln.get_task(private).deprecated_at_epoch == 0
    assert ln.get_node(n3).was_disabled_in_epoch == 1
    ticket = ln.get_ticket(world["disputed"])
    assert (ticket.requested_attestation_nodes, ticket.already_attested_nodes, ticket.is_in_dispute) == (
        [n2], [n2], True,
    )
    assert ticket.stack_merkle_leaves_vector[32:] == b"\x07" * 32
    assert ln.get_stack(world["stacks"][2]).is_claimed


def test_deleted_entries_read_as_none_and_are_not_found(net, world):
    ln = net.ln
    claimed, gone = world["claimed"], world["gone"]

    async def body(client, node):
        _, tables = await R.read_db(client, ln.db_id)
        assert await R.read_stack(client, tables.stacks, claimed) is None
        assert await R.read_ticket(client, tables.stack_settlement_tickets, claimed) is None
        assert await R.read_task(client, tables.tasks, gone) is None
        assert await R.read_subscriptions(client, tables.tasks, gone) == []
        field = tables.stacks.field_id(T.small_id_bcs(claimed))
        result = await client.execute(command=cmd.GetObject(object_id=field))
        assert not result.is_ok() and result.result_string[0] == Status.NOT_FOUND
        # A key that never existed is absent in the same way.
        assert await R.read_node(client, tables.nodes, 999) is None

    assert ln.get_stack(claimed) is None and ln.get_ticket(claimed) is None and ln.get_task(gone) is None
    read(net, body)


def test_field_objects_as_a_full_node_serves_them(net, world):
    """The raw objects: types, owners, ``json`` names, and ``contents`` = id ‖ bcs(key) ‖ bcs(value)."""
    ln = net.ln
    stack_id = world["stacks"][0]
    plain = world["tasks"][0]

    async def body(client, node):
        _, tables = await R.read_db(client, ln.db_id)
        db = (await client.execute(command=cmd.GetObject(object_id=ln.db_id))).result_data
        assert db.json.to_dict()["stacks"] == {"id": tables.stacks.id, "size": "4"}
        assert db.json.to_dict()["next_task_small_id"] == {"inner": str(ln.db_config().next_task_small_id)}
        assert db.contents.value[:32] == bytes.fromhex(ln.db_id[2:])

        fid = tables.stacks.field_id(T.small_id_bcs(stack_id))
        obj = (await client.execute(command=cmd.GetObject(object_id=fid))).result_data
        pkg = ln.package_id
        assert obj.object_type == f"0x2::dynamic_field::Field<{pkg}::db::StackSmallId,{pkg}::db::Stack>"
        assert (obj.owner.kind, obj.owner.address) == (OBJECT, tables.stacks.id)
        assert obj.version == ln.get_object(ln.db_id)["version"]
        stack = ln.get_stack(stack_id)
        assert obj.json.to_dict() == {
            "id": fid,
            "name": {"inner": str(stack_id)},
            "value": {
                "owner": stack.owner,
                "price_per_one_million_compute_units": str(stack.price_per_one_million_compute_units),
                "num_compute_units": str(stack.num_compute_units),
                "selected_node_id": {"inner": str(stack.selected_node_id)},
                "task_small_id": {"inner": str(stack.task_small_id)},
                "is_claimed": False,
            },
        }
        assert obj.contents.value == (
            bytes.fromhex(fid[2:]) + stack_id.to_bytes(8, "little") + bytes.fromhex(stack.owner[2:])
            + b"".join(v.to_bytes(8, "little") for v in (
                stack.price_per_one_million_compute_units, stack.num_compute_units, stack.selected_node_id,
                stack.task_small_id))
            + b"\x00"
        )

        # ObjectTable: the field holds the Task's id; the Task object is owned by the field.
        task = ln.get_task(plain)
        tfid = tables.tasks.field_id(T.small_id_bcs(plain))
        field = (await client.execute(command=cmd.GetObject(object_id=tfid))).result_data
        assert field.object_type == (
            f"0x2::dynamic_field::Field<0x2::dynamic_object_field::Wrapper<{pkg}::db::TaskSmallId>,0x2::object::ID>"
        )
        assert field.json.to_dict() == {"id": tfid, "name": {"name": {"inner": str(plain)}}, "value": task.task_id}
        child = (await client.execute(command=cmd.GetObject(object_id=task.task_id))).result_data
        assert (child.object_type, child.owner.kind, child.owner.address) == (f"{pkg}::db::Task", OBJECT, tfid)
        j = child.json.to_dict()
        assert j["subscribed_nodes"] == {"id": table_uid(task.task_id, "subscribed_nodes"), "size": "2"}
        assert j["subscribed_nodes_small_ids"] == {
            "contents": {"id": table_uid(task.task_id, "subscribed_nodes_small_ids"), "size": "3"},
        }
        assert j["role"] == {"inner": 0} and j["model_name"] == task.model_name

        # vector<u8> fields are base64 in a ticket.
        ticket = ln.get_ticket(stack_id)
        tk = (await client.execute(command=cmd.GetObject(object_id=ticket.ticket_id))).result_data.json.to_dict()
        assert base64.b64decode(tk["committed_stack_proof"]) == ticket.committed_stack_proof
        assert tk["dispute_settled_at_epoch"] == str(ticket.dispute_settled_at_epoch)

    read(net, body)


def test_list_dynamic_fields_pages_every_table(net, world):
    ln = net.ln
    plain = world["tasks"][0]
    n1, n2, _ = world["nodes"]

    async def body(client, node):
        _, tables = await R.read_db(client, ln.db_id)
        nodes = await R.list_dynamic_fields(client, tables.nodes.id, page_size=2)
        expected = sorted(tables.nodes.field_id(T.small_id_bcs(n)) for n in world["nodes"])
        assert [e.field_id for e in nodes] == expected  # ordered by id, across two pages
        assert {e.kind for e in nodes} == {"field"} and {e.parent for e in nodes} == {tables.nodes.id}
        assert sorted(int.from_bytes(e.name_bcs, "little") for e in nodes) == sorted(world["nodes"])
        assert {e.name_type for e in nodes} == {f"{ln.package_id}::db::NodeSmallId"}

        tasks = await R.list_dynamic_fields(client, tables.tasks.id)
        assert {e.kind for e in tasks} == {"object"}
        assert sorted(e.child_id for e in tasks) == sorted(
            ln.get_task(t).task_id for t in world["tasks"] if ln.get_task(t) is not None
        )
        assert {e.value_type for e in tasks} == {f"{ln.package_id}::db::Task"}

        stacks = await R.list_dynamic_fields(client, tables.stacks.id)
        assert sorted(int.from_bytes(e.name_bcs, "little") for e in stacks) == sorted(
            s for s in world["stacks"] if s != world["claimed"]
        )

        task = await R.read_task_object(client, tables.tasks, plain)
        subs = await R.list_dynamic_fields(client, task.subscribed_nodes.id)
        assert sorted(int.from_bytes(e.name_bcs, "little") for e in subs) == [n1, n2]
        vec = await R.list_dynamic_fields(client, task.subscribed_nodes_small_ids.id)
        assert sorted(int.from_bytes(e.name_bcs, "little") for e in vec) == [0, 1, 2]

        # A NodeBadge's subscriptions are dynamic fields on its UID: Field<TaskSmallId, bool>.
        badge = net.badge("node-1", "NodeBadge")
        on_badge = await R.list_dynamic_fields(client, badge.object_id)
        assert sorted(int.from_bytes(e.name_bcs, "little") for e in on_badge) == sorted(
            t for t in world["tasks"] if any(s.node_small_id == n1 for s in ln.subscriptions(t))
        )
        assert await R.list_dynamic_fields(client, "0x" + "ee" * 32) == []
        return node.calls

    assert "ListDynamicFields" in read(net, body)


def test_reads_follow_new_transactions(net, world):
    """The node reads the chain file live: an entry written after the node started is found at its derived id."""
    ln = net.ln
    plain = world["tasks"][0]

    async def before(client, node):
        config, tables = await R.read_db(client, ln.db_id)
        return config.next_stack_small_id, tables

    next_stack, tables = read(net, before)
    assert net.buy(plain, draw=0) == next_stack

    async def after(client, node):
        assert await R.read_stack(client, tables.stacks, next_stack) == ln.get_stack(next_stack) is not None
        config, now = await R.read_db(client, ln.db_id)
        assert (config.next_stack_small_id, now.stacks.size) == (next_stack + 1, tables.stacks.size + 1)

    read(net, after)
