"""Decoding Sui transactions, for the loopback node: BCS ``TransactionData`` back into
:class:`~atoma_ops.chain.sui.txbuild.TransactionData` (exactly: re-encoding gives the same bytes, or the bytes are
refused), pure arguments back into values, and an ``atoma::db`` call's arguments back out of its transaction
(:func:`decode_entry_call`), which is what a node does before it can execute anything.

The product only builds transactions (:mod:`atoma_ops.chain.sui.txbuild`); this half lives with the test double.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import base58

from atoma_ops.chain.errors import InvalidArgument, TransactionRejected
from atoma_ops.chain.sui.bcs import Reader
from atoma_ops.chain.sui.txbuild import (
    INT_SIZES,
    MODULE,
    Argument,
    Command,
    GasCoinArg,
    GasConfig,
    Input,
    InputArg,
    MergeCoins,
    MoveCall,
    OwnedRef,
    PureArg,
    ResultArg,
    SharedRef,
    SplitCoins,
    TransactionData,
    TransferObjects,
    bcs_classes,
    encode_transaction,
    parse_pure_type,
)
from atoma_ops.protocol import abi

__all__ = ["EntryCall", "decode_entry_call", "decode_pure", "decode_transaction"]


@dataclass(frozen=True)
class EntryCall:
    """The arguments of one ``atoma::db`` entry call, as :func:`move_call_transaction` takes them."""

    package_id: str
    function: str
    args: dict[str, Any]
    db: SharedRef
    random: SharedRef | None
    objects: dict[str, OwnedRef]
    merge_coins: tuple[OwnedRef, ...] = field(default=())


def _decode(reader: Reader, ty: Any) -> Any:
    if ty in INT_SIZES:
        return int.from_bytes(reader.take(INT_SIZES[ty]), "little")
    if ty == abi.BOOL:
        byte = reader.take(1)[0]
        if byte > 1:
            raise ValueError(f"bool byte {byte}")
        return byte == 1
    if ty == "ascii":
        data = reader.take(reader.uleb128())
        if not data.isascii():
            raise ValueError("ascii::String with a byte above 0x7f")
        return data.decode("ascii")
    kind, inner = ty
    if kind == "option":
        tag = reader.take(1)[0]
        if tag > 1:
            raise ValueError(f"Option tag {tag}")
        return _decode(reader, inner) if tag else None
    n = reader.uleb128()
    if inner == abi.U8:
        return reader.take(n)
    return [_decode(reader, inner) for _ in range(n)]


def decode_pure(move_type: str, data: bytes) -> Any:
    """Inverse of :func:`encode_pure`: ints, bool, str, ``bytes`` for ``vector<u8>``, lists, None.

    Raises:
        TransactionRejected: the bytes are not a canonical BCS value of the type (or have bytes left over).
        InvalidArgument: the type is not supported.
    """
    ty = parse_pure_type(move_type)
    reader = Reader(bytes(data))
    try:
        value = _decode(reader, ty)
    except ValueError as exc:
        raise TransactionRejected(f"pure argument is not a BCS {move_type}: {exc}") from None
    if reader.pos != len(reader.data):
        raise TransactionRejected(f"pure argument has {len(reader.data) - reader.pos} bytes after its {move_type}")
    return value


def _hex_address(addr) -> str:
    return "0x" + bytes(addr.Address).hex()


def _from_objref(ref) -> OwnedRef:
    digest = base58.b58encode(bytes(ref.ObjectDigest.Digest)).decode()
    return OwnedRef(_hex_address(ref.ObjectID), ref.SequenceNumber, digest)


def _from_input(arg) -> Input:
    if arg.enum_name == "Pure":
        return PureArg(bytes(arg.value))
    if arg.enum_name == "Object":
        obj = arg.value
        if obj.enum_name == "SharedObject":
            ref = obj.value
            return SharedRef(_hex_address(ref.ObjectID), ref.SequenceNumber, bool(ref.Mutable))
        if obj.enum_name == "ImmOrOwnedObject":
            return _from_objref(obj.value)
        raise ValueError(f"unsupported object input {obj.enum_name}")
    raise ValueError(f"unsupported input {arg.enum_name}")


def _from_argument(arg) -> Argument:
    name = arg.enum_name
    if name == "GasCoin":
        return GasCoinArg()
    if name == "Input":
        return InputArg(arg.value)
    if name == "Result":
        return ResultArg(arg.value)
    index, nested = arg.value
    return ResultArg(index, nested)


def _from_command(cmd) -> Command:
    name, value = cmd.enum_name, cmd.value
    args = lambda xs: tuple(_from_argument(a) for a in xs)  # noqa: E731
    if name == "MoveCall":
        return MoveCall(
            _hex_address(value.Package),
            value.Module,
            value.Function,
            args(value.Arguments),
            tuple(bytes(t.serialize()) for t in value.Type_Arguments),
        )
    if name == "MergeCoins":
        return MergeCoins(_from_argument(value.ToCoin), args(value.FromCoins))
    if name == "SplitCoin":
        return SplitCoins(_from_argument(value.FromCoin), args(value.Amount))
    if name == "TransferObjects":
        return TransferObjects(args(value.Objects), _from_argument(value.Address))
    raise ValueError(f"unsupported command {name}")


def decode_transaction(tx_bytes: bytes) -> TransactionData:
    """Parse BCS ``TransactionData`` (V1, programmable; MoveCall, MergeCoins, SplitCoins, TransferObjects).

    Raises:
        TransactionRejected: the bytes are not such a transaction, or not in canonical form (re-encoding the
            result would not give the same bytes).
    """
    if not isinstance(tx_bytes, (bytes, bytearray, memoryview)):
        raise TransactionRejected(f"transaction bytes expected, got {type(tx_bytes).__name__}")
    raw = bytes(tx_bytes)
    bcs = bcs_classes()
    try:
        data = bcs.TransactionData.deserialize(raw).value
        kind = data.TransactionKind
        if kind.enum_name != "ProgrammableTransaction":
            raise ValueError(f"transaction kind {kind.enum_name}")
        expiration = data.TransactionExpiration
        if expiration.enum_name not in ("None", "Epoch"):
            raise ValueError(f"expiration {expiration.enum_name}")
        gas = data.GasData
        tx = TransactionData(
            sender=_hex_address(data.Sender),
            gas=GasConfig(
                _hex_address(gas.Owner), gas.Price, gas.Budget, tuple(_from_objref(r) for r in gas.Payment)
            ),
            inputs=tuple(_from_input(i) for i in kind.value.Inputs),
            commands=tuple(_from_command(c) for c in kind.value.Command),
            expiration_epoch=expiration.value if expiration.enum_name == "Epoch" else None,
        )
        canonical = encode_transaction(tx) == raw
    except (TransactionRejected, InvalidArgument) as exc:
        raise TransactionRejected(f"cannot decode transaction: {exc}") from None
    except Exception as exc:  # canoser raises IOError, IndexError, TypeError, AssertionError … on bad bytes
        raise TransactionRejected(f"cannot decode transaction: {type(exc).__name__}: {exc}") from None
    if not canonical:
        raise TransactionRejected("transaction bytes are not in canonical BCS form")
    return tx


def decode_entry_call(tx: TransactionData) -> EntryCall:
    """The ``atoma::db`` call in a transaction built like :func:`move_call_transaction` builds it.

    Checks the shape §11 prescribes: an optional ``MergeCoins`` into the coin argument, then one ``MoveCall`` of an
    entry function with ``AtomaDb`` (shared, mutable) first, Random ``0x8`` (shared, immutable), owned objects for
    badges and coins, and canonical pure bytes for every other parameter.

    Raises:
        TransactionRejected: the transaction is anything else.
    """
    commands = list(tx.commands)
    if not commands or not isinstance(commands[-1], MoveCall):
        raise TransactionRejected("the transaction must end with a MoveCall")
    call = commands.pop()
    merge = commands.pop() if commands and isinstance(commands[-1], MergeCoins) else None
    if commands:
        raise TransactionRejected("only a MergeCoins may precede the MoveCall")
    params = abi.ENTRY_FUNCTIONS.get(call.function)
    if call.module != MODULE or params is None:
        raise TransactionRejected(f"{call.module}::{call.function} is not an entry function of atoma::db")
    if call.type_arguments:
        raise TransactionRejected(f"{call.function} takes no type arguments")
    if len(call.arguments) != len(params) + 1:
        raise TransactionRejected(f"{call.function} takes {len(params) + 1} arguments, got {len(call.arguments)}")

    def input_of(arg: Argument, what: str) -> Input:
        if not isinstance(arg, InputArg) or not 0 <= arg.index < len(tx.inputs):
            raise TransactionRejected(f"{call.function}: {what} must be a transaction input")
        return tx.inputs[arg.index]

    db = input_of(call.arguments[0], "AtomaDb")
    if not isinstance(db, SharedRef) or not db.mutable:
        raise TransactionRejected(f"{call.function}: AtomaDb must be a mutable shared object")
    args: dict[str, Any] = {}
    objects: dict[str, OwnedRef] = {}
    random: SharedRef | None = None
    coin_arg: Argument | None = None
    for p, arg in zip(params, call.arguments[1:]):
        item = input_of(arg, p.name)
        if p.type == abi.RANDOM:
            if not isinstance(item, SharedRef) or item.object_id != abi.RANDOM_OBJECT_ID or item.mutable:
                raise TransactionRejected(f"{call.function}: {p.name} must be the immutable shared object 0x8")
            random = item
        elif p.is_object:
            if not isinstance(item, OwnedRef):
                raise TransactionRejected(f"{call.function}: {p.name} must be an owned object")
            objects[p.name] = item
            if p.type == abi.USDC_COIN_MUT:
                coin_arg = arg
        else:
            if not isinstance(item, PureArg):
                raise TransactionRejected(f"{call.function}: {p.name} must be a pure value")
            args[p.name] = decode_pure(p.type, item.data)

    merged: tuple[OwnedRef, ...] = ()
    if merge is not None:
        if coin_arg is None or merge.destination != coin_arg:
            raise TransactionRejected(f"{call.function}: MergeCoins must merge into the coin argument")
        sources = [input_of(a, "a merged coin") for a in merge.sources]
        if not sources or not all(isinstance(s, OwnedRef) for s in sources):
            raise TransactionRejected(f"{call.function}: merged coins must be owned objects")
        merged = tuple(sources)  # type: ignore[arg-type]
    return EntryCall(call.package, call.function, args, db, random, objects, merged)
