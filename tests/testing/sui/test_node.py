"""The loopback Sui full node (read side), read through pysui's own gRPC client and commands.

Every test builds state on a fresh localnet with the localnet adapter, serves that chain file on 127.0.0.1 and
reads it back with ``pysui_client_for`` + pysui ``SuiCommand``s (or pysui's request classes where a command has
no page size), so what is checked is what pysui decodes from the wire.
"""

from __future__ import annotations

import asyncio
import base64
import json

import base58
import pytest

import pysui.sui.sui_common.sui_commands as cmd
import pysui.sui.sui_grpc.pgrpc_requests as rn
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sp
from pysui.sui.sui_common.txn_arg_encoder import grpc_to_raw_parameters

from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.chain.sui.client import pysui_client_for, pysui_config_for
from atoma_ops.testing.sui import (
    GAS_COIN_BALANCE,
    GAS_COIN_TYPE,
    REFERENCE_GAS_PRICE,
    BackgroundLoopbackNode,
    LoopbackSuiNode,
    gas_coin_id,
)
from atoma_ops.testing.sui.objects import object_digest
from atoma_ops.protocol import abi
from atoma_ops.wallet import Wallet, normalize_address

MINTS = (3_000_000, 2_000_000)
TASKS = 3
# publish + one transaction per mint, registration and task
TRANSACTIONS = 1 + len(MINTS) + 1 + TASKS
ADDRESS, SHARED, IMMUTABLE = sp.OwnerOwnerKind.ADDRESS, sp.OwnerOwnerKind.SHARED, sp.OwnerOwnerKind.IMMUTABLE


@pytest.fixture
def home(localnet_home):
    """A localnet where the user holds two USDC coins, node-1 is registered and the admin created three tasks."""

    async def setup() -> None:
        chain = localnet_home.open()
        try:
            user = chain.wallet.aliases()["user"]
            for amount in MINTS:
                await chain.faucet_mint(user, amount)
            await chain.register_node_entry("node-1")
            await chain.create_task_entry("admin", role=0, model_name="llama")
            await chain.create_task_entry("admin", role=1, security_level=2)
            await chain.create_task_entry("admin", role=0, is_public=False)
        finally:
            await chain.close()

    asyncio.run(setup())
    return localnet_home


def serve(home, body, *, active: str = "user"):
    """Run ``await body(node, client, ln, wallet)`` against a loopback node on ``home``; the client and the node
    are closed afterwards whatever happens. ``ln`` is a separate localnet connection for expected values."""

    async def main():
        ln = Localnet(home.chain_file)
        wallet = Wallet.load(home.client_yaml)
        try:
            async with LoopbackSuiNode(home.chain_file) as node:
                async with pysui_client_for(node.url, wallet, active=active) as client:
                    return await body(node, client, ln, wallet)
        finally:
            ln.close()

    return asyncio.run(main())


async def ok(client, command):
    result = await client.execute(command=command)
    assert result.is_ok(), result.result_string
    return result.result_data


async def ok_request(client, request):
    """A pysui gRPC request class where no SuiCommand fits (service info, a page size)."""
    result = await client.execute_grpc_request(request=request)
    assert result.is_ok(), result.result_string
    return result.result_data


def sig(p: sp.OpenSignature) -> tuple:
    """(reference, body type, type name, instantiation) of one parameter, for comparing whole signatures."""
    ref = p.reference.name if p.reference else None
    inst = tuple((b.type.name, b.type_name) for b in p.body.type_parameter_instantiation)
    return ref, p.body.type.name, p.body.type_name, inst


# ------------------------------------------------------------------------------------------------ ledger
def test_service_info_and_epoch(home):
    async def body(node, client, ln, wallet):
        # Connecting (async with) fetched the epoch: gas price and protocol limits.
        assert node.calls[0] == "GetEpoch"
        assert client.current_gas_price == REFERENCE_GAS_PRICE
        assert client.protocol().transaction_constraints.max_tx_size_bytes == 128 * 1024
        assert client.protocol().transaction_constraints.max_pure_argument_size == 16 * 1024

        assert await ok(client, cmd.GetChainIdentifier()) == ln.chain_id
        info = await ok_request(client, rn.GetServiceInfo())
        assert (info.chain_id, info.chain, info.epoch) == (ln.chain_id, "localnet", 0)
        assert info.checkpoint_height == TRANSACTIONS

        epoch = (await ok(client, cmd.GetEpoch())).epoch
        assert (epoch.epoch, epoch.reference_gas_price) == (0, REFERENCE_GAS_PRICE)
        assert epoch.protocol_config.attributes["max_arguments"] == "512"

        # Live: the node reads the file on every request.
        ln.advance_epoch(2)
        assert (await ok(client, cmd.GetEpoch())).epoch.epoch == 2
        assert (await ok(client, cmd.GetEpoch(epoch_id=1))).epoch.epoch == 1
        assert not (await client.execute(command=cmd.GetEpoch(epoch_id=3))).is_ok()
        assert (await ok_request(client, rn.GetServiceInfo())).epoch == 2

    serve(home, body)


def test_get_object_node_badge_shared_db_and_packages(home):
    async def body(node, client, ln, wallet):
        node1 = wallet.aliases()["node-1"]
        [badge] = ln.badges(node1)
        assert badge.kind == "NodeBadge"

        obj = await ok(client, cmd.GetObject(object_id=badge.object_id))
        assert obj.object_id == badge.object_id
        assert obj.object_type == f"{ln.package_id}::db::NodeBadge"
        assert (obj.owner.kind, obj.owner.address) == (ADDRESS, node1)
        assert obj.version == badge.version
        assert obj.digest == object_digest(badge.object_id, badge.version)
        assert len(base58.b58decode(obj.digest)) == 32
        assert obj.json.to_dict() == {"id": badge.object_id, "small_id": {"inner": str(badge.small_id)}}
        assert obj.contents.value == bytes.fromhex(badge.object_id[2:]) + badge.small_id.to_bytes(8, "little")

        db = await ok(client, cmd.GetObject(object_id=ln.db_id))
        assert db.object_type == f"{ln.package_id}::db::AtomaDb"
        assert (db.owner.kind, db.owner.version) == (SHARED, 1)  # initial shared version
        assert db.version == ln.get_object(ln.db_id)["version"] > 1

        package = await ok(client, cmd.GetObject(object_id=ln.package_id))
        assert (package.object_type, package.owner.kind) == ("package", IMMUTABLE)

        missing = "0x" + "ab" * 32
        assert not (await client.execute(command=cmd.GetObject(object_id=missing))).is_ok()

        batch = await ok(client, cmd.GetMultipleObjects(object_ids=[ln.db_id, badge.object_id, "0x8", missing]))
        assert [r.object.object_id for r in batch.objects[:3]] == [ln.db_id, badge.object_id, abi.RANDOM_OBJECT_ID]
        assert batch.objects[2].object.object_type == "0x2::random::Random"
        assert batch.objects[2].object.owner.kind == SHARED
        assert batch.objects[3].object is None and batch.objects[3].error.code == 5  # NOT_FOUND

        # A transaction from another connection bumps AtomaDb: new version, new digest, seen at once.
        chain = home.open()
        try:
            await chain.create_task_entry("admin", role=0)
        finally:
            await chain.close()
        after = await ok(client, cmd.GetObject(object_id=ln.db_id))
        assert after.version > db.version and after.digest != db.digest

    serve(home, body)


# ------------------------------------------------------------------------------------------------ state
def test_owned_objects_filtered_by_type_and_paged(home):
    async def body(node, client, ln, wallet):
        aliases = wallet.aliases()
        node1, admin = aliases["node-1"], aliases["admin"]
        node_badge_type = f"{ln.package_id}::db::NodeBadge"
        task_badge_type = f"{ln.package_id}::db::TaskBadge"

        page = await ok(client, cmd.GetObjectsForType(owner=node1, object_type=node_badge_type))
        assert [o.object_id for o in page.objects] == [b.object_id for b in ln.badges(node1)]
        assert page.objects[0].object_type == node_badge_type and page.next_page_token is None
        assert (await ok(client, cmd.GetObjectsForType(owner=node1, object_type=task_badge_type))).objects == []

        task_badges = sorted(b.object_id for b in ln.badges(admin) if b.kind == "TaskBadge")
        assert len(task_badges) == TASKS
        seen, token, pages = [], None, 0
        while True:
            request = rn.GetObjectsForTypeSC(owner=admin, object_type=task_badge_type, page_size=2, page_token=token)
            page = await ok_request(client, request)
            assert len(page.objects) <= 2
            seen += [o.object_id for o in page.objects]
            pages += 1
            token = page.next_page_token
            if token is None:
                break
        assert (seen, pages) == (task_badges, 2)

        everything = await client.execute_for_all(command=cmd.GetObjectsOwnedByAddress(owner=admin))
        assert everything.is_ok(), everything.result_string
        assert sorted(o.object_type.rsplit("::", 1)[-1] for o in everything.result_data.objects) == (
            ["AtomaManagerBadge", "SUI>"] + ["TaskBadge"] * TASKS  # + the virtual gas coin, Coin<0x2::sui::SUI>
        )

        # A type without parameters matches every instantiation (USDC coins and the gas coin); addresses may be
        # short or long.
        long_coin = f"{normalize_address('0x2')}::coin::Coin"
        coins = await ok(client, cmd.GetObjectsForType(owner=aliases["user"], object_type=long_coin))
        assert sorted(o.object_type for o in coins.objects) == sorted([ln.coin_type] * len(MINTS) + [GAS_COIN_TYPE])
        bad = await client.execute(command=cmd.GetObjectsForType(owner=admin, object_type="not a type"))
        assert not bad.is_ok()

    serve(home, body)


def test_usdc_coins_and_balance(home):
    async def body(node, client, ln, wallet):
        user = wallet.aliases()["user"]
        coins = (await ok(client, cmd.GetCoins(owner=user, coin_type=ln.coin_type))).objects
        assert sorted(c.balance for c in coins) == sorted(MINTS)
        assert {c.object_id for c in coins} == {c.object_id for c in ln.usdc_coins(user)}
        assert all(c.object_type == ln.coin_type and c.owner.address == user for c in coins)

        balance = (await ok(client, cmd.GetAddressCoinBalance(owner=user, coin_type=ln.usdc_type))).balance
        assert balance.balance == balance.coin_balance == sum(MINTS)
        # SUI: the virtual gas coin, and nothing else.
        assert (await ok(client, cmd.GetAddressCoinBalance(owner=user))).balance.balance == GAS_COIN_BALANCE
        balances = (await ok(client, cmd.GetAddressCoinBalances(owner=user))).balances
        assert [(b.coin_type, b.balance) for b in balances] == [
            ("0x2::sui::SUI", GAS_COIN_BALANCE), (ln.usdc_type, sum(MINTS)),
        ]
        assert [(g.object_id, g.balance) for g in (await ok(client, cmd.GetGas(owner=user))).objects] == [
            (gas_coin_id(user), GAS_COIN_BALANCE)
        ]
        admin = wallet.aliases()["admin"]
        assert (await ok(client, cmd.GetAddressCoinBalance(owner=admin, coin_type=ln.usdc_type))).balance.balance == 0

        # Minted while serving: seen at once.
        ln.faucet_mint(user, 7)
        balance = (await ok(client, cmd.GetAddressCoinBalance(owner=user, coin_type=ln.usdc_type))).balance
        assert balance.balance == sum(MINTS) + 7

    serve(home, body)


# ------------------------------------------------------------------------------------------------ packages
def test_get_function_acquire_new_stack_entry(home):
    async def body(node, client, ln, wallet):
        function = (await ok(client, cmd.GetFunction(
            package=ln.package_id, module_name="db", function_name="acquire_new_stack_entry"
        ))).function
        assert (function.name, function.is_entry, function.returns) == ("acquire_new_stack_entry", True, [])
        assert [sig(p) for p in function.parameters] == [
            ("MUTABLE", "DATATYPE", f"{ln.package_id}::db::AtomaDb", ()),
            ("MUTABLE", "DATATYPE", "0x2::coin::Coin", (("DATATYPE", ln.usdc_type),)),
            (None, "U64", None, ()),
            (None, "U64", None, ()),
            (None, "U64", None, ()),
            ("IMMUTABLE", "DATATYPE", "0x2::random::Random", ()),
            ("MUTABLE", "DATATYPE", "0x2::tx_context::TxContext", ()),
        ]
        # pysui's own reading of it: TxContext dropped, six arguments for the caller.
        assert len(grpc_to_raw_parameters(sp.GetFunctionResponse(function=function))) == 6

        create = (await ok(client, cmd.GetFunction(
            package=ln.package_id, module_name="db", function_name="create_task_entry"
        ))).function
        assert [sig(p) for p in create.parameters[1:-1]] == [
            ("IMMUTABLE", "DATATYPE", f"{ln.package_id}::db::AtomaManagerBadge", ()),
            (None, "U16", None, ()),
            (None, "DATATYPE", "0x1::option::Option", (("DATATYPE", "0x1::ascii::String"),)),
            (None, "DATATYPE", "0x1::option::Option", (("U16", None),)),
            (None, "DATATYPE", "0x1::option::Option", (("U8", None),)),
            (None, "BOOL", None, ()),
        ]

        for name, params in abi.ENTRY_FUNCTIONS.items():
            f = (await ok(client, cmd.GetFunction(package=ln.package_id, module_name="db", function_name=name))).function
            assert len(f.parameters) == len(params) + 2, name
            assert f.parameters[0].body.type_name.endswith("::db::AtomaDb")
            assert f.parameters[-1].body.type_name == "0x2::tx_context::TxContext"

        for package, module, name in [
            (ln.package_id, "db", "no_such_function"),
            (ln.package_id, "other", "register_node_entry"),
            (ln.usdc_package_id, "db", "register_node_entry"),
        ]:
            result = await client.execute(command=cmd.GetFunction(package=package, module_name=module, function_name=name))
            assert not result.is_ok()

    serve(home, body)


def test_pysui_builder_resolves_inputs_through_the_node(home):
    """pysui's transaction builder reads GetFunction and BatchGetObjects from the node to encode a move call."""

    async def body(node, client, ln, wallet):
        user = wallet.aliases()["user"]
        coin = ln.usdc_coins(user)[0]
        node.calls.clear()
        tx = await client.transaction(initial_sender=user)
        target = f"{ln.package_id}::db::acquire_new_stack_entry"
        await tx.move_call(target=target, arguments=[ln.db_id, coin.object_id, 1, 1000, 5, "0x8"])
        gas = sp.Object(
            object_id="0x" + "11" * 32, version=1, digest=object_digest("0x" + "11" * 32, 1), balance=10**10,
            owner=sp.Owner(kind=ADDRESS, address=user),
        )
        await tx.build(gas_budget=5_000_000, use_gas_objects=[gas])
        assert {"GetFunction", "BatchGetObjects"} <= set(node.calls)

        inputs = json.loads(tx.built_transaction.to_json())["V1"]["TransactionKind"]["ProgrammableTransaction"]["Inputs"]
        db, paid, random = inputs[0]["Object"], inputs[1]["Object"], inputs[5]["Object"]
        assert db["SharedObject"] == {
            "ObjectID": {"Address": ln.db_id[2:]}, "SequenceNumber": 1, "Mutable": True,
        }
        assert paid["ImmOrOwnedObject"] == {
            "ObjectID": {"Address": coin.object_id[2:]},
            "SequenceNumber": coin.version,
            "ObjectDigest": {"Digest": base58.b58decode(object_digest(coin.object_id, coin.version)).hex()},
        }
        assert random["SharedObject"]["Mutable"] is False
        assert [i["Pure"] for i in inputs[2:5]] == [(n).to_bytes(8, "little").hex() for n in (1, 1000, 5)]

    serve(home, body)


# ------------------------------------------------------------------------------------------------ plumbing
def test_background_node_serves_sync_code_and_stops(home):
    wallet = Wallet.load(home.client_yaml)
    ln = Localnet(home.chain_file)
    chain_id = ln.chain_id
    ln.close()

    async def chain_identifier(url: str) -> str:
        async with pysui_client_for(url, wallet) as client:
            return await ok(client, cmd.GetChainIdentifier())

    with BackgroundLoopbackNode(home.chain_file) as node:
        url = node.url
        assert url.startswith("http://127.0.0.1:")
        assert asyncio.run(chain_identifier(url)) == chain_id
        assert "GetServiceInfo" in node.calls
    assert not node.node.running
    with pytest.raises(OSError):  # nothing listens there any more
        asyncio.run(chain_identifier(url))


def test_loopback_only_and_keys_in_memory(home):
    wallet = Wallet.load(home.client_yaml)
    with pytest.raises(ValueError):
        LoopbackSuiNode(home.chain_file, host="0.0.0.0")
    with pytest.raises(ValueError):
        pysui_config_for("http://10.1.2.3:9000", wallet)
    with pytest.raises(RuntimeError):
        pysui_client_for("http://127.0.0.1:9000", wallet)  # outside an event loop

    config = pysui_config_for("http://127.0.0.1:9000", wallet, active="node-1")
    aliases = wallet.aliases()
    assert config.active_address == aliases["node-1"]
    assert config.active_group.address_list == [a.address for a in wallet.accounts()]
    with pytest.raises(RuntimeError):
        config.save_to(home.path / "pysui")
    assert not (home.path / "pysui").exists()
    # pysui signs with the wallet's own key: ed25519 is deterministic, so the signatures are equal.
    tx = b"loopback signing check"
    keypair = config.keypair_for_address(address=aliases["user"])
    assert keypair.new_sign_secure(base64.b64encode(tx).decode()) == wallet.sign(aliases["user"], tx)
