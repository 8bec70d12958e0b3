"""Offline Sui transaction building (chain.sui.txbuild): BCS bytes, digests and decoding (atoma-protocol.md §11).

Expected bytes are worked by hand from the BCS rules: integers little-endian, lengths and enum tags as ULEB128
(one byte below 128), ``Option<T>`` as ``00`` or ``01 ‖ T``, object ids as 32 raw bytes, object digests as a
length-prefixed 32-byte vector. Enum tags used here (Sui's ``TransactionData``): TransactionData::V1 = 0,
TransactionKind::ProgrammableTransaction = 0, CallArg::Pure = 0 / Object = 1, ObjectArg::ImmOrOwnedObject = 0 /
SharedObject = 1, Command::MoveCall = 0 / TransferObjects = 1 / SplitCoins = 2 / MergeCoins = 3,
Argument::GasCoin = 0 / Input(u16) = 1 / Result(u16) = 2, TransactionExpiration::None = 0.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import replace

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atoma_ops.chain.errors import InvalidArgument, TransactionRejected
from atoma_ops.chain.sui.txbuild import (
    GasCoinArg,
    GasConfig,
    InputArg,
    MoveCall,
    OwnedRef,
    PureArg,
    ResultArg,
    SharedRef,
    SplitCoins,
    TransactionData,
    TransferObjects,
    encode_pure,
    encode_transaction,
    move_call_transaction,
)
from atoma_ops.chain.digests import transaction_digest
from atoma_ops.testing.sui.txdecode import EntryCall, decode_entry_call, decode_pure, decode_transaction
from atoma_ops.protocol import abi
from atoma_ops.wallet import Wallet

# ------------------------------------------------------------------------------------------ real sui CLI vectors
# Real `sui` CLI output quoted in public Sui documentation examples: `sui keytool sign` (vector 1: key, address,
# transaction bytes, signature) and an executed `sui client transfer-sui` (vector 2: transaction bytes and digest).
V1_KEY = "AEXleFEKuJrNh9E3kpvwLqdsfeQfuliUQQ61cvJVfq4N"
V1_ADDRESS = "0x0ab645b6d1c536534a6a2cf4616390a8f4922b0f8b127e494a7eb9fdde70acc4"
V1_TX = (
    "AAABACBfW8mp0S2iIQrUO+DYEgmJwoCkCeK+1TaRoFylBcj5OgEBAQABAAAKtkW20cU2U0pqLPRhY5Co9JIrD4sSfklKfrn93nCsxAGu2oCnO27K"
    "CecF8/5MCYD/a70RaCgidwUG2YXu/uuRdR3TDwAAAAAAIKFBk8eQNjePP9XUGoGEheBe+6FWVN6F3cpznptxrIprCrZFttHFNlNKaiz0YWOQqPSS"
    "Kw+LEn5JSn65/d5wrMToAwAAAAAAAICWmAAAAAAAAA=="
)
V1_SIGNATURE = (
    "AEM7o1w9vXOzUwbT2jxmZDLHViVwUDVh0vHk14ykTwQzBI7LVrrv6kdllbXO/rpvVfxjwL9H6EU4uWK5E+8yDwJsM0pAD4Mtz5IJfmRVWVn3RUM/"
    "QjsOOs+EV9ligkWOGg=="
)
V2_TX = (
    "AAACACAPxTBFXuQTK3Ye2C2rcymQy3r3PmnNbnGaKlut6u0QWwAIZAAAAAAAAAACAgABAQEAAQECAAABAADPQWMYYnFSI9quOVwaQGd8jE2TNSzO"
    "30iuNRaEybUjawGJjbebL6xFY95QxhUjFrEQhU/88VaBiaUbgbvu4H0NiwgAAAAAAAAAIJ81/VxG8PvN68Y0Va/ih/IXUmzHgkC6U7s/avcmEtvu"
    "z0FjGGJxUiParjlcGkBnfIxNkzUszt9IrjUWhMm1I2voAwAAAAAAAADIF6gEAAAAAA=="
)
V2_DIGEST = "FFtreqtLFYA8HcquG7NeRJzG9r5WuvMUvUCcqa3WNzJY"


def test_digest_of_real_cli_transaction():
    assert transaction_digest(base64.b64decode(V2_TX)) == V2_DIGEST


def test_wallet_signature_matches_real_cli_signature():
    wallet = Wallet.from_keystore_text(json.dumps([V1_KEY]))
    assert wallet.active_address == V1_ADDRESS
    assert wallet.sign(V1_ADDRESS, base64.b64decode(V1_TX)) == V1_SIGNATURE


def test_decode_real_transfer_sui_transaction():
    raw = base64.b64decode(V2_TX)
    tx = decode_transaction(raw)
    sender = "0xcf41631862715223daae395c1a40677c8c4d93352ccedf48ae351684c9b5236b"
    assert tx.sender == sender
    assert tx.gas.owner == sender
    assert tx.gas.price == 1000  # e8 03
    assert tx.gas.budget == 20_000_000_000  # 00 c8 17 a8 04 = 0x04a817c800
    (coin,) = tx.gas.payment
    assert coin.object_id == "0x898db79b2fac4563de50c6152316b110854ffcf1568189a51b81bbeee07d0d8b"
    assert coin.version == 8
    assert base58.b58decode(coin.digest).hex() == "9f35fd5c46f0fbcdebc63455afe287f217526cc78240ba53bb3f6af72612dbee"
    assert tx.inputs == (
        PureArg(bytes.fromhex("0fc530455ee4132b761ed82dab732990cb7af73e69cd6e719a2a5badeaed105b")),  # recipient
        PureArg(bytes.fromhex("6400000000000000")),  # amount 100
    )
    assert tx.commands == (
        SplitCoins(GasCoinArg(), (InputArg(1),)),
        TransferObjects((ResultArg(0),), InputArg(0)),
    )
    assert tx.expiration_epoch is None
    assert encode_transaction(tx) == raw


def test_decode_real_keytool_transaction():
    tx = decode_transaction(base64.b64decode(V1_TX))
    assert tx.sender == V1_ADDRESS
    assert tx.gas.budget == 10_000_000  # 80 96 98
    assert tx.gas.payment[0].version == 1_037_085  # 1d d3 0f
    assert tx.commands == (TransferObjects((GasCoinArg(),), InputArg(0)),)
    with pytest.raises(TransactionRejected):
        decode_entry_call(tx)  # a SUI transfer is not an atoma::db call


# ---------------------------------------------------------------------------------------------- fixtures
def _id(n: int) -> str:
    return "0x" + f"{n:x}".rjust(64, "0")


def _digest(fill: int) -> str:
    return base58.b58encode(bytes([fill]) * 32).decode()


SENDER = _id(0xA11CE)
PACKAGE = _id(0xA70A)
DB = SharedRef(_id(0xDB), 17, True)
RANDOM = SharedRef("0x8", 42, False)
GAS = GasConfig(SENDER, 1000, 50_000_000, [OwnedRef(_id(0x6A5), 9, _digest(0x66))])
BADGE = OwnedRef(_id(0xBAD6E), 5, _digest(0xBB))
COIN = OwnedRef(_id(0xC0171), 3, _digest(0xCC))

# §11's table (and §4.16/§4.18 for destroy_disabled_node, the admin setters and toggles): the arguments after
# AtomaDb. "owned" is an owned object (badge or coin), "random" the shared Random 0x8, anything else a pure type.
# rotate_node_public_key and new_network_key_rotation are in §11 but not in abi.ENTRY_FUNCTIONS.
OWNED, RAND = "owned", "random"
SECTION_11 = {
    "register_node_entry": [],
    "create_task_entry": [OWNED, "u16", "Option<ascii::String>", "Option<u16>", "Option<u8>", "bool"],
    "deprecate_task": [OWNED],
    "remove_deprecated_task": [OWNED],
    "remove_deprecated_task_by_admin": [OWNED, "u64"],
    "whitelist_nodes_for_task": [OWNED, "u64", "vector<u64>"],
    "subscribe_node_to_task": [OWNED, "u64", "u64"],
    "update_node_subscription": [OWNED, "u64", "u64"],
    "unsubscribe_node_from_task": [OWNED, "u64"],
    "acquire_new_stack_entry": [OWNED, "u64", "u64", "u64", RAND],
    "try_settle_stack": [OWNED, "u64", "u64", "vector<u8>", "vector<u8>", RAND],
    "submit_stack_settlement_attestation": [OWNED, "u64", "vector<u8>", "vector<u8>"],
    "start_attestation_dispute": [OWNED, "u64", "vector<u8>"],
    "claim_funds": [OWNED, "vector<u64>"],
    "claim_funds_for_stacks": [OWNED, "vector<u64>", "vector<u64>"],
    "withdraw_fees": [OWNED],
    "permanently_disable_node": [OWNED],
    "destroy_disabled_node": [OWNED],
    **{
        name: [OWNED, "u64"]
        for name in (
            "set_cross_validation_probability_permille",
            "set_cross_validation_extra_nodes_count",
            "set_sampling_consensus_charge_permille",
            "set_cross_validation_extra_nodes_charge_permille",
            "set_permille_to_slash_node_on_timeout",
            "set_permille_for_oracle_on_dispute",
            "set_permille_for_honest_nodes_on_dispute",
            "set_required_registration_toma_collateral",
        )
    },
    "disable_registration": [OWNED],
    "enable_registration": [OWNED],
}

# A sample value per pure type and its BCS bytes, worked by hand.
SAMPLES = {
    "u16": (0x0201, bytes([0x01, 0x02])),
    "u64": (0x0102030405060708, bytes.fromhex("0807060504030201")),
    "bool": (True, b"\x01"),
    "Option<ascii::String>": ("llama", b"\x01\x05llama"),
    "Option<u16>": (7, b"\x01\x07\x00"),
    "Option<u8>": (50, b"\x01\x32"),
    "vector<u8>": (bytes(range(32)), b"\x20" + bytes(range(32))),
    "vector<u64>": ([1, 2**64 - 1], b"\x02" + b"\x01" + b"\x00" * 7 + b"\xff" * 8),
}


def _call_inputs(function: str):
    """Dummy args/objects for ``function``, following SECTION_11 positions and the ABI's parameter names."""
    args, objects, expected = {}, {}, []
    for param, kind in zip(abi.ENTRY_FUNCTIONS[function], SECTION_11[function]):
        if kind == OWNED:
            ref = COIN if param.name == "wallet" else BADGE
            objects[param.name] = ref
            expected.append(ref)
        elif kind == RAND:
            expected.append(RANDOM)
        else:
            value, data = SAMPLES[kind]
            args[param.name] = value
            expected.append(PureArg(data))
    return args, objects, expected


def _build(function: str, args: dict, objects: dict, **kw) -> bytes:
    takes_random = RAND in SECTION_11.get(function, [])
    kw.setdefault("random", RANDOM if takes_random else None)
    kw.setdefault("db", DB)
    kw.setdefault("gas", GAS)
    return move_call_transaction(
        kw.pop("sender", SENDER), kw.pop("package_id", PACKAGE), function, args, objects=objects, **kw
    )


def test_table_covers_every_entry_function():
    assert set(SECTION_11) == set(abi.ENTRY_FUNCTIONS)
    for name, kinds in SECTION_11.items():
        assert len(kinds) == len(abi.ENTRY_FUNCTIONS[name]), name


# --------------------------------------------------------------------------------- every entry function
@pytest.mark.parametrize("function", sorted(abi.ENTRY_FUNCTIONS))
def test_argument_kinds_follow_section_11(function):
    args, objects, expected = _call_inputs(function)
    tx = decode_transaction(_build(function, args, objects))
    (call,) = tx.commands
    assert isinstance(call, MoveCall)
    assert (call.package, call.module, call.function, call.type_arguments) == (PACKAGE, "db", function, ())
    resolved = [tx.resolve(a) for a in call.arguments]
    assert all(isinstance(a, InputArg) for a in call.arguments)
    # AtomaDb first: shared, mutable, at its initial shared version. No TxContext argument.
    assert resolved[0] == SharedRef(_id(0xDB), 17, True)
    assert len(resolved) == 1 + len(SECTION_11[function])
    for kind, got, want in zip(SECTION_11[function], resolved[1:], expected):
        if kind == RAND:
            assert got == SharedRef("0x" + "0" * 63 + "8", 42, False)
        elif kind == OWNED:
            assert isinstance(got, OwnedRef) and got == want
        else:
            assert isinstance(got, PureArg) and got.data == want.data, kind


@pytest.mark.parametrize("function", sorted(abi.ENTRY_FUNCTIONS))
def test_round_trip_every_entry_function(function):
    args, objects, _ = _call_inputs(function)
    raw = _build(function, args, objects)
    tx = decode_transaction(raw)
    assert tx.sender == SENDER
    assert (tx.gas.owner, tx.gas.price, tx.gas.budget) == (SENDER, 1000, 50_000_000)
    assert tx.gas.payment == (OwnedRef(_id(0x6A5), 9, _digest(0x66)),)
    assert tx.expiration_epoch is None
    takes_random = RAND in SECTION_11[function]
    assert decode_entry_call(tx) == EntryCall(
        PACKAGE, function, args, DB, RANDOM if takes_random else None, objects, ()
    )
    assert encode_transaction(tx) == raw


def test_set_value_bytes_worked_by_hand():
    fn = "set_cross_validation_probability_permille"
    raw = move_call_transaction(
        SENDER, PACKAGE, fn, {"value": 5}, db=DB, objects={"badge": BADGE}, gas=GAS
    )
    addr = lambda n: n.to_bytes(32, "big")  # noqa: E731
    u64 = lambda n: n.to_bytes(8, "little")  # noqa: E731
    inp = lambda i: b"\x01" + i.to_bytes(2, "little")  # noqa: E731
    expected = (
        b"\x00"  # TransactionData::V1
        + b"\x00"  # TransactionKind::ProgrammableTransaction
        + b"\x03"  # 3 inputs
        + b"\x01\x01" + addr(0xDB) + u64(17) + b"\x01"  # Object/SharedObject, initial version 17, mutable
        + b"\x01\x00" + addr(0xBAD6E) + u64(5) + b"\x20" + b"\xbb" * 32  # Object/ImmOrOwnedObject
        + b"\x00\x08" + u64(5)  # Pure, 8 bytes: u64 5
        + b"\x01"  # 1 command
        + b"\x00" + addr(0xA70A) + b"\x02db" + bytes([len(fn)]) + fn.encode()  # MoveCall package::db::fn
        + b"\x00"  # no type arguments
        + b"\x03" + inp(0) + inp(1) + inp(2)  # arguments Input(0..2)
        + addr(0xA11CE)  # sender
        + b"\x01" + addr(0x6A5) + u64(9) + b"\x20" + b"\x66" * 32  # gas payment
        + addr(0xA11CE) + u64(1000) + u64(50_000_000)  # gas owner, price, budget
        + b"\x00"  # TransactionExpiration::None
    )
    assert raw == expected


def test_acquire_with_merge_coins_bytes_worked_by_hand():
    extra1, extra2 = OwnedRef(_id(0xC2), 4, _digest(0x22)), OwnedRef(_id(0xC3), 6, _digest(0x33))
    raw = move_call_transaction(
        SENDER,
        PACKAGE,
        "acquire_new_stack_entry",
        {"task_small_id": 1, "num_compute_units": 1_000_000, "price": 300},
        db=DB,
        random=RANDOM,
        objects={"wallet": COIN},
        merge_coins=[extra1, extra2],
        gas=GAS,
    )
    addr = lambda n: n.to_bytes(32, "big")  # noqa: E731
    u64 = lambda n: n.to_bytes(8, "little")  # noqa: E731
    inp = lambda i: b"\x01" + i.to_bytes(2, "little")  # noqa: E731
    owned = lambda n, v, d: b"\x01\x00" + addr(n) + u64(v) + b"\x20" + bytes([d]) * 32  # noqa: E731
    fn = b"acquire_new_stack_entry"
    expected = (
        b"\x00\x00"
        + b"\x08"  # inputs: db, wallet, task, units, price, random, extra coins
        + b"\x01\x01" + addr(0xDB) + u64(17) + b"\x01"
        + owned(0xC0171, 3, 0xCC)
        + b"\x00\x08" + bytes.fromhex("0100000000000000")
        + b"\x00\x08" + bytes.fromhex("40420f0000000000")  # 1_000_000 = 0x0f4240
        + b"\x00\x08" + bytes.fromhex("2c01000000000000")  # 300 = 0x012c
        + b"\x01\x01" + addr(8) + u64(42) + b"\x00"  # Random 0x8, shared, immutable
        + owned(0xC2, 4, 0x22)
        + owned(0xC3, 6, 0x33)
        + b"\x02"  # 2 commands
        + b"\x03" + inp(1) + b"\x02" + inp(6) + inp(7)  # MergeCoins(Input(1), [Input(6), Input(7)])
        + b"\x00" + addr(0xA70A) + b"\x02db" + bytes([len(fn)]) + fn + b"\x00"
        + b"\x06" + b"".join(inp(i) for i in range(6))
        + addr(0xA11CE)
        + b"\x01" + addr(0x6A5) + u64(9) + b"\x20" + b"\x66" * 32
        + addr(0xA11CE) + u64(1000) + u64(50_000_000)
        + b"\x00"
    )
    assert raw == expected
    call = decode_entry_call(decode_transaction(raw))
    assert call.objects == {"wallet": COIN}
    assert call.merge_coins == (extra1, extra2)


# --------------------------------------------------------------------------------------------- pure values
@pytest.mark.parametrize(
    "move_type, value, expected",
    [
        ("u64", 0, b"\x00" * 8),
        ("u64", 2**64 - 1, b"\xff" * 8),
        ("u64", 1_000_000, bytes.fromhex("40420f0000000000")),
        ("u64", "1000000", bytes.fromhex("40420f0000000000")),  # decimal strings, as the CLI passes them
        ("u16", 65535, b"\xff\xff"),
        ("u8", 255, b"\xff"),
        ("bool", True, b"\x01"),
        ("bool", False, b"\x00"),
        ("vector<u8>", b"", b"\x00"),
        ("vector<u8>", "0xdeadbeef", b"\x04\xde\xad\xbe\xef"),
        ("vector<u8>", bytes(31), b"\x1f" + bytes(31)),  # 31 bytes encode: the contract checks lengths
        ("vector<u8>", b"\x07" * 300, b"\xac\x02" + b"\x07" * 300),  # 300 = 0b10_0101100 -> ULEB 0xac 0x02
        ("vector<u64>", [], b"\x00"),
        ("vector<u64>", [5, 256], b"\x02" + bytes.fromhex("0500000000000000") + bytes.fromhex("0001000000000000")),
        ("Option<u16>", 7, b"\x01\x07\x00"),
        ("Option<u16>", 0x1234, b"\x01\x34\x12"),
        ("Option<u16>", None, b"\x00"),
        ("Option<u8>", 0, b"\x01\x00"),
        ("Option<u8>", None, b"\x00"),
        ("Option<String>", "llama", b"\x01\x05llama"),
        ("Option<ascii::String>", "", b"\x01\x00"),
        ("Option<0x1::ascii::String>", None, b"\x00"),
        ("ascii::String", "ab", b"\x02ab"),
    ],
)
def test_encode_pure_worked_by_hand(move_type, value, expected):
    assert encode_pure(move_type, value) == expected
    decoded = decode_pure(move_type, expected)
    if move_type == "u64" and isinstance(value, str):
        assert decoded == int(value)
    elif move_type == "vector<u8>" and isinstance(value, str):
        assert decoded == bytes.fromhex(value[2:])
    else:
        assert decoded == value


def test_option_values_inside_a_transaction():
    args = {"role": 1, "model_name": None, "security_level": None, "minimum_reputation_score": 9, "is_public": False}
    tx = decode_transaction(_build("create_task_entry", args, {"badge": BADGE}))
    pures = [tx.resolve(a).data for a in tx.commands[0].arguments[2:]]
    assert pures == [b"\x01\x00", b"\x00", b"\x00", b"\x01\x09", b"\x00"]


@pytest.mark.parametrize(
    "move_type, data",
    [
        ("bool", b"\x02"),
        ("u64", b"\x01" * 7),  # too short
        ("u16", b"\x01\x00\x00"),  # a byte left over
        ("Option<u8>", b"\x02\x01"),  # tag 2
        ("vector<u8>", b"\x80\x00"),  # non-canonical ULEB128 for 0
        ("vector<u8>", b"\x03ab"),  # shorter than its length
        ("Option<String>", b"\x01\x01\xff"),  # not ASCII
    ],
)
def test_decode_pure_refuses_bad_bytes(move_type, data):
    with pytest.raises(TransactionRejected):
        decode_pure(move_type, data)


@pytest.mark.parametrize(
    "move_type, value",
    [
        ("u64", -1),
        ("u64", 2**64),
        ("u16", 65536),
        ("u8", 256),
        ("Option<u8>", 256),
        ("Option<u16>", -1),
        ("bool", 1),
        ("u64", True),
        ("u64", 1.5),
        ("Option<String>", "llamа"),  # Cyrillic "а"
        ("Option<String>", "café"),
        ("ascii::String", None),
        ("vector<u64>", [1, -1]),
        ("vector<u64>", "12"),
        ("vector<u8>", "0xabc"),  # odd hex
        ("vector<u8>", [1, 256]),
        ("u32", 1),  # not a type of the ABI
    ],
)
def test_encode_pure_refuses_bad_values(move_type, value):
    with pytest.raises(InvalidArgument):
        encode_pure(move_type, value)


# ----------------------------------------------------------------------------------------- bad call inputs
SETTLE_ARGS = {
    "stack_small_id": 3,
    "num_claimed_compute_units": 10,
    "committed_stack_proof": b"\x01" * 32,
    "stack_merkle_leaf": b"\x02" * 32,
}


def test_thirty_one_byte_proof_is_encoded():
    raw = _build("try_settle_stack", {**SETTLE_ARGS, "committed_stack_proof": b"\x01" * 31}, {"node_badge": BADGE})
    call = decode_entry_call(decode_transaction(raw))
    assert call.args["committed_stack_proof"] == b"\x01" * 31


@pytest.mark.parametrize(
    "function, args, objects, extra",
    [
        ("subscribe_node_to_task", {"task_small_id": 1, "price_per_one_million_compute_units": -1}, "node_badge", {}),
        ("subscribe_node_to_task", {"task_small_id": 2**64, "price_per_one_million_compute_units": 1}, "node_badge",
         {}),
        (
            "create_task_entry",
            {"role": 0, "model_name": "llamа", "security_level": None, "minimum_reputation_score": None,
             "is_public": True},
            "badge",
            {},
        ),
        ("unsubscribe_node_from_task", {}, "node_badge", {}),  # missing task_small_id
        ("unsubscribe_node_from_task", {"task_small_id": 1, "price": 2}, "node_badge", {}),  # unexpected argument
        ("unsubscribe_node_from_task", {"task_small_id": 1}, None, {}),  # missing badge
        ("withdraw_fees", {}, "node_badge", {"random": RANDOM}),  # takes no &Random
        ("withdraw_fees", {}, "node_badge", {"merge_coins": [COIN]}),  # no coin parameter
        ("try_settle_stack", SETTLE_ARGS, "node_badge", {"random": None}),  # Random missing
        ("try_settle_stack", SETTLE_ARGS, "node_badge", {"random": SharedRef("0x8", 42, True)}),  # mutable Random
        ("try_settle_stack", SETTLE_ARGS, "node_badge", {"random": SharedRef("0x6", 42, False)}),  # not 0x8
        ("withdraw_fees", {}, "node_badge", {"db": SharedRef(_id(0xDB), 17, False)}),  # immutable AtomaDb
        ("no_such_function", {}, None, {}),
    ],
)
def test_bad_calls_raise_invalid_argument(function, args, objects, extra):
    objs = {objects: BADGE} if objects else {}
    takes_random = RAND in SECTION_11.get(function, [])
    kw = {"random": RANDOM if takes_random else None, **extra}
    with pytest.raises(InvalidArgument):
        _build(function, args, objs, **kw)


def test_object_given_as_shared_or_owned_where_the_other_is_needed():
    with pytest.raises(InvalidArgument):
        _build("withdraw_fees", {}, {"node_badge": SharedRef(_id(0xBAD6E), 1, False)})
    with pytest.raises(InvalidArgument):
        move_call_transaction(SENDER, PACKAGE, "withdraw_fees", {}, db=BADGE, objects={"node_badge": BADGE}, gas=GAS)


def test_same_object_twice_is_refused():
    gas = GasConfig(SENDER, 1000, 50_000_000, [BADGE])
    with pytest.raises(InvalidArgument):
        _build("withdraw_fees", {}, {"node_badge": BADGE}, gas=gas)
    with pytest.raises(InvalidArgument):
        _build("acquire_new_stack_entry", {"task_small_id": 1, "num_compute_units": 1, "price": 1},
               {"wallet": COIN}, merge_coins=[COIN])


@pytest.mark.parametrize(
    "make",
    [
        lambda: OwnedRef(_id(1), 1, base58.b58encode(bytes(31)).decode()),  # 31-byte digest
        lambda: OwnedRef(_id(1), 1, "0OIl"),  # not base58
        lambda: OwnedRef("0xnothex", 1, _digest(1)),
        lambda: OwnedRef("0x" + "1" * 65, 1, _digest(1)),  # longer than 32 bytes
        lambda: OwnedRef(_id(1), -1, _digest(1)),
        lambda: SharedRef(_id(1), 2**64, True),
        lambda: SharedRef(_id(1), 1, 1),
        lambda: GasConfig(SENDER, 1000, 10, []),
        lambda: GasConfig(SENDER, -1, 10, [BADGE]),
    ],
)
def test_bad_references_raise_invalid_argument(make):
    with pytest.raises(InvalidArgument):
        make()


def test_short_ids_are_padded():
    assert SharedRef("0x8", 1, False).object_id == "0x" + "0" * 63 + "8"
    assert OwnedRef("0XAB", 1, _digest(1)).object_id == "0x" + "0" * 62 + "ab"


# ------------------------------------------------------------------------------------------- digests
def test_digest_is_stable_and_changes_with_every_input():
    base = dict(args=SETTLE_ARGS, objects={"node_badge": BADGE})
    first = _build("try_settle_stack", **base)
    assert _build("try_settle_stack", **base) == first
    digest = transaction_digest(first)
    assert len(base58.b58decode(digest)) == 32
    variants = [
        dict(base, args={**SETTLE_ARGS, "stack_small_id": 4}),
        dict(base, args={**SETTLE_ARGS, "num_claimed_compute_units": 11}),
        dict(base, args={**SETTLE_ARGS, "committed_stack_proof": b"\x01" * 31 + b"\x00"}),
        dict(base, args={**SETTLE_ARGS, "stack_merkle_leaf": b"\x02" * 33}),
        dict(base, objects={"node_badge": replace(BADGE, version=6)}),
        dict(base, objects={"node_badge": replace(BADGE, digest=_digest(0xBC))}),
        dict(base, objects={"node_badge": replace(BADGE, object_id=_id(0xBAD6F))}),
        dict(base, db=replace(DB, initial_shared_version=18)),
        dict(base, db=replace(DB, object_id=_id(0xDC))),
        dict(base, random=replace(RANDOM, initial_shared_version=43)),
        dict(base, sender=_id(0xB0B)),
        dict(base, package_id=_id(0xA70B)),
        dict(base, gas=replace(GAS, price=1001)),
        dict(base, gas=replace(GAS, budget=50_000_001)),
        dict(base, gas=replace(GAS, owner=_id(0xB0B))),
        dict(base, gas=replace(GAS, payment=[replace(GAS.payment[0], version=10)])),
    ]
    digests = {digest} | {transaction_digest(_build("try_settle_stack", **v)) for v in variants}
    assert len(digests) == len(variants) + 1


@settings(max_examples=60, deadline=None)
@given(
    role=st.integers(0, 2**16 - 1),
    model=st.none() | st.text(st.characters(max_codepoint=127), max_size=40),
    level=st.none() | st.integers(0, 2**16 - 1),
    reputation=st.none() | st.integers(0, 255),
    public=st.booleans(),
)
def test_create_task_round_trip_property(role, model, level, reputation, public):
    args = {
        "role": role,
        "model_name": model,
        "security_level": level,
        "minimum_reputation_score": reputation,
        "is_public": public,
    }
    raw = _build("create_task_entry", args, {"badge": BADGE})
    assert decode_entry_call(decode_transaction(raw)).args == args


@settings(max_examples=40, deadline=None)
@given(
    proof=st.binary(max_size=200),
    leaf=st.binary(max_size=200),
    ids=st.lists(st.integers(0, 2**64 - 1), max_size=20),
)
def test_vector_round_trip_property(proof, leaf, ids):
    raw = _build("try_settle_stack", {**SETTLE_ARGS, "committed_stack_proof": proof, "stack_merkle_leaf": leaf},
                 {"node_badge": BADGE})
    call = decode_entry_call(decode_transaction(raw))
    assert (call.args["committed_stack_proof"], call.args["stack_merkle_leaf"]) == (proof, leaf)
    raw = _build("claim_funds", {"settled_ticket_ids": ids}, {"node_badge": BADGE})
    assert decode_entry_call(decode_transaction(raw)).args == {"settled_ticket_ids": ids}


# ------------------------------------------------------------------------------------------- decoding errors
def _settle_bytes() -> bytes:
    return _build("try_settle_stack", SETTLE_ARGS, {"node_badge": BADGE})


def test_decode_refuses_trailing_and_truncated_bytes():
    raw = _settle_bytes()
    with pytest.raises(TransactionRejected):
        decode_transaction(raw + b"\x00")
    with pytest.raises(TransactionRejected):
        decode_transaction(raw[:-1])
    with pytest.raises(TransactionRejected):
        decode_transaction(b"")
    with pytest.raises(TransactionRejected):
        decode_transaction(b"\x01" + raw[1:])  # TransactionData has only V1
    with pytest.raises(TransactionRejected):
        decode_transaction("not bytes")


def test_decode_refuses_non_canonical_bool():
    raw = bytearray(_settle_bytes())
    # V1, PTB, input count, Object, SharedObject (5 bytes), then 32-byte id and u64 version: the flag is at 45.
    assert raw[45] == 1
    raw[45] = 2
    with pytest.raises(TransactionRejected):
        decode_transaction(bytes(raw))


def test_decode_refuses_non_canonical_length():
    raw = _settle_bytes()
    # Byte 2 is the input count (db, badge, four pures, Random): 7. ``87 00`` is also 7 in ULEB128, but not minimal.
    assert raw[2] == 7
    with pytest.raises(TransactionRejected):
        decode_transaction(raw[:2] + b"\x87\x00" + raw[3:])


def _tx_with(inputs, arguments, function="withdraw_fees") -> TransactionData:
    return TransactionData(SENDER, GAS, tuple(inputs), (MoveCall(PACKAGE, "db", function, tuple(arguments)),))


@pytest.mark.parametrize(
    "inputs, arguments, function",
    [
        ([SharedRef(_id(0xDB), 17, False), BADGE], [InputArg(0), InputArg(1)], "withdraw_fees"),  # immutable db
        ([DB, SharedRef(_id(0xBAD6E), 1, False)], [InputArg(0), InputArg(1)], "withdraw_fees"),  # shared badge
        ([DB, PureArg(b"\x01")], [InputArg(0), InputArg(1)], "withdraw_fees"),  # pure where a badge goes
        ([DB, BADGE], [InputArg(0), InputArg(1), InputArg(1)], "withdraw_fees"),  # too many arguments
        ([DB, BADGE], [InputArg(0), GasCoinArg()], "withdraw_fees"),  # gas coin as badge
        ([DB, BADGE], [InputArg(0), InputArg(1)], "transfer"),  # not an entry function
        ([DB, BADGE, PureArg(b"\x01")], [InputArg(0), InputArg(1), InputArg(2)], "unsubscribe_node_from_task"),
        ([DB, BADGE, BADGE], [InputArg(0), InputArg(1), InputArg(2)], "unsubscribe_node_from_task"),  # obj as u64
    ],
)
def test_decode_entry_call_refuses_wrong_shapes(inputs, arguments, function):
    tx = decode_transaction(encode_transaction(_tx_with(inputs, arguments, function)))
    with pytest.raises(TransactionRejected):
        decode_entry_call(tx)


# ------------------------------------------------------------------------------------------- import cost
def test_cli_import_does_not_load_pysui():
    code = (
        "import sys, atoma_ops.cli, atoma_ops.chain.sui.txbuild;"
        "print(sorted(m for m in sys.modules if m == 'pysui' or m.startswith('pysui.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
