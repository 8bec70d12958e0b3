"""Offline transaction building for the Sui adapter: BCS ``TransactionData`` for ``<package>::db::<function>``.

Nothing here touches the network. A call is encoded from :data:`atoma_ops.protocol.abi.ENTRY_FUNCTIONS` with
explicit object references (atoma-protocol.md §11):

* input 0 is ``AtomaDb``, a shared object passed mutably;
* ``&Random`` is the shared object ``0x8``, passed immutably;
* badges and USDC coins are owned objects, by reference or by value (the PTB input is the same);
* every other parameter is a ``Pure`` input whose BCS bytes are encoded here (:func:`encode_pure`), after the value
  has been checked with :mod:`atoma_ops.chain.codec`. pysui's own argument encoder is not used: it turns
  ``Option<T>`` with a value into ``None`` and mistakes ``Option<ascii::String>`` for an object id.

``TxContext`` is never an argument. For ``acquire_new_stack_entry`` with several USDC coins, a ``MergeCoins``
command merges the extra coins into the ``wallet`` coin before the ``MoveCall``.

The transaction envelope is serialized with pysui's BCS classes (``pysui.sui.sui_bcs.bcs``), imported on first
use: importing them loads pysui's client stack (about half a second), which the CLI must not pay at start-up.

Decoding (bytes back into :class:`TransactionData`, an ``atoma::db`` call's arguments back out of it) is what a Sui
node does, so it lives with the test double: :mod:`atoma_ops.testing.sui.txdecode`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

import base58

from ...protocol import abi
from ...protocol.constants import U64_MAX
from .. import codec
from ..errors import InvalidArgument, TransactionRejected
from .bcs import uleb128

MODULE = "db"
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
INT_SIZES = {abi.U8: 1, abi.U16: 2, abi.U64: 8}
_ASCII_NAMES = ("String", "ascii::String", "std::ascii::String", "0x1::ascii::String")
_OPTION_PREFIXES = ("Option<", "option::Option<", "std::option::Option<", "0x1::option::Option<")


def bcs_classes():
    """pysui's BCS module, imported on first use (it pulls in pysui's client stack)."""
    from pysui.sui.sui_bcs import bcs

    return bcs


# -- plain values -------------------------------------------------------------------------------------------------


def _address(name: str, text: Any) -> str:
    """``0x`` + 64 lowercase hex digits; shorter hex is left-padded as Sui does (``0x8``)."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{name}: expected a 0x… address, got {type(text).__name__}")
    body = text.strip()
    if body[:2] in ("0x", "0X"):
        body = body[2:]
    if not body or len(body) > 64 or not _HEX_RE.fullmatch(body):
        raise InvalidArgument(f"{name}: {text!r} is not a Sui address or object id")
    return "0x" + body.lower().rjust(64, "0")


def _u64(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}: expected an integer, got {type(value).__name__}")
    if not 0 <= value <= U64_MAX:
        raise InvalidArgument(f"{name}: {value} does not fit u64")
    return value


def _digest(name: str, text: Any) -> str:
    if not isinstance(text, str):
        raise InvalidArgument(f"{name}: expected a base58 digest, got {type(text).__name__}")
    try:
        raw = base58.b58decode(text)
    except ValueError:
        raise InvalidArgument(f"{name}: {text!r} is not base58") from None
    if len(raw) != 32:
        raise InvalidArgument(f"{name}: {text!r} is {len(raw)} bytes, an object digest is 32")
    return base58.b58encode(raw).decode()


# -- object references, gas, arguments, commands -----------------------------------------------------------------


@dataclass(frozen=True)
class SharedRef:
    """A shared object input: id, the version at which it became shared, and whether it is used mutably."""

    object_id: str
    initial_shared_version: int
    mutable: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "object_id", _address("shared object id", self.object_id))
        _u64("initial_shared_version", self.initial_shared_version)
        if not isinstance(self.mutable, bool):
            raise InvalidArgument(f"mutable: expected bool, got {self.mutable!r}")


@dataclass(frozen=True)
class OwnedRef:
    """An owned (or immutable) object input: id, version and base58 object digest."""

    object_id: str
    version: int
    digest: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "object_id", _address("object id", self.object_id))
        _u64("version", self.version)
        object.__setattr__(self, "digest", _digest("object digest", self.digest))


@dataclass(frozen=True)
class GasConfig:
    """Gas owner, price and budget (MIST), and the SUI coins that pay. ``payment`` is stored as a tuple."""

    owner: str
    price: int
    budget: int
    payment: tuple[OwnedRef, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "owner", _address("gas owner", self.owner))
        _u64("gas price", self.price)
        _u64("gas budget", self.budget)
        payment = tuple(self.payment)
        if not payment:
            raise InvalidArgument("gas: at least one gas coin is needed")
        for ref in payment:
            if not isinstance(ref, OwnedRef):
                raise InvalidArgument(f"gas payment: expected OwnedRef, got {type(ref).__name__}")
        object.__setattr__(self, "payment", payment)


@dataclass(frozen=True)
class PureArg:
    """A ``Pure`` input: the BCS bytes of one value."""

    data: bytes


Input = Union[SharedRef, OwnedRef, PureArg]


@dataclass(frozen=True)
class GasCoinArg:
    """``Argument::GasCoin``."""


@dataclass(frozen=True)
class InputArg:
    """``Argument::Input(index)``: the transaction input at ``index``."""

    index: int


@dataclass(frozen=True)
class ResultArg:
    """``Argument::Result(index)``, or ``NestedResult(index, nested)`` when ``nested`` is set."""

    index: int
    nested: int | None = None


Argument = Union[GasCoinArg, InputArg, ResultArg]


@dataclass(frozen=True)
class MoveCall:
    """``Command::MoveCall``. ``type_arguments`` holds each type tag's BCS bytes (kept raw for exact round trips)."""

    package: str
    module: str
    function: str
    arguments: tuple[Argument, ...]
    type_arguments: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class MergeCoins:
    destination: Argument
    sources: tuple[Argument, ...]


@dataclass(frozen=True)
class SplitCoins:
    coin: Argument
    amounts: tuple[Argument, ...]


@dataclass(frozen=True)
class TransferObjects:
    objects: tuple[Argument, ...]
    address: Argument


Command = Union[MoveCall, MergeCoins, SplitCoins, TransferObjects]


@dataclass(frozen=True)
class TransactionData:
    """``TransactionData::V1`` with a programmable transaction, as built or decoded here."""

    sender: str
    gas: GasConfig
    inputs: tuple[Input, ...]
    commands: tuple[Command, ...]
    expiration_epoch: int | None = None

    def resolve(self, arg: Argument) -> Input | Argument:
        """The input an ``InputArg`` points at; any other argument unchanged."""
        if isinstance(arg, InputArg):
            return self.inputs[arg.index]
        return arg

    @property
    def move_call(self) -> MoveCall:
        """The transaction's single ``MoveCall`` (TransactionRejected if there is none or several)."""
        calls = [c for c in self.commands if isinstance(c, MoveCall)]
        if len(calls) != 1:
            raise TransactionRejected(f"expected one MoveCall, found {len(calls)}")
        return calls[0]


# -- pure values ------------------------------------------------------------------------------------------------


def parse_pure_type(move_type: str) -> Any:
    """``"Option<u16>"`` -> ``("option", "u16")``; scalars stay strings, ascii strings become ``"ascii"``."""
    if not isinstance(move_type, str):
        raise InvalidArgument(f"expected a Move type name, got {type(move_type).__name__}")
    t = move_type.replace(" ", "")
    if t in INT_SIZES or t == abi.BOOL:
        return t
    if t in _ASCII_NAMES:
        return "ascii"
    for prefix in _OPTION_PREFIXES:
        if t.startswith(prefix) and t.endswith(">"):
            return ("option", parse_pure_type(t[len(prefix) : -1]))
    if t.startswith("vector<") and t.endswith(">"):
        return ("vector", parse_pure_type(t[len("vector<") : -1]))
    raise InvalidArgument(f"unsupported pure type {move_type!r}")


def _encode(name: str, ty: Any, value: Any) -> bytes:
    if ty in INT_SIZES:
        return codec.check_value(name, ty, value).to_bytes(INT_SIZES[ty], "little")
    if ty == abi.BOOL:
        return b"\x01" if codec.check_value(name, ty, value) else b"\x00"
    if ty == "ascii":
        if value is None:
            raise InvalidArgument(f"{name}: expected an ASCII string, got None")
        data = codec.check_value(name, abi.OPTION_STRING, value).encode("ascii")
        return uleb128(len(data)) + data
    kind, inner = ty
    if kind == "option":
        return b"\x00" if value is None else b"\x01" + _encode(name, inner, value)
    if inner == abi.U8:
        data = codec.check_value(name, abi.VECTOR_U8, value)
        return uleb128(len(data)) + data
    if isinstance(value, (str, bytes, bytearray, dict)) or not hasattr(value, "__iter__"):
        raise InvalidArgument(f"{name}: expected a list, got {type(value).__name__}")
    items = list(value)
    return uleb128(len(items)) + b"".join(_encode(f"{name}[{i}]", inner, v) for i, v in enumerate(items))


def encode_pure(move_type: str, value: Any, *, name: str = "value") -> bytes:
    """BCS bytes of a pure Move value.

    Types: ``u8``, ``u16``, ``u64``, ``bool``, ``String`` / ``ascii::String`` (BCS of its bytes, ASCII only),
    ``vector<T>`` and ``Option<T>`` (``00``, or ``01`` followed by the BCS of ``T``) over these. Values are checked
    (and converted: decimal strings for integers, hex strings for ``vector<u8>``) by :func:`codec.check_value`.
    The length of a ``vector<u8>`` is not checked: the contract checks it.

    Raises:
        InvalidArgument: the value does not fit the type, or the type is not supported.
    """
    return _encode(name, parse_pure_type(move_type), value)


# -- transaction encoding -----------------------------------------------------------------------------------------


def _bcs_address(bcs, text: str):
    return bcs.Address(list(bytes.fromhex(text[2:])))


def _bcs_objref(bcs, ref: OwnedRef):
    return bcs.ObjectReference(
        _bcs_address(bcs, ref.object_id), ref.version, bcs.Digest(list(base58.b58decode(ref.digest)))
    )


def _bcs_input(bcs, item: Input):
    if isinstance(item, PureArg):
        return bcs.CallArg("Pure", list(item.data))
    if isinstance(item, SharedRef):
        shared = bcs.SharedObjectReference(
            _bcs_address(bcs, item.object_id), item.initial_shared_version, item.mutable
        )
        return bcs.CallArg("Object", bcs.ObjectArg("SharedObject", shared))
    if isinstance(item, OwnedRef):
        return bcs.CallArg("Object", bcs.ObjectArg("ImmOrOwnedObject", _bcs_objref(bcs, item)))
    raise InvalidArgument(f"not a transaction input: {item!r}")


def _bcs_argument(bcs, arg: Argument):
    if isinstance(arg, GasCoinArg):
        return bcs.Argument("GasCoin")
    if isinstance(arg, InputArg):
        return bcs.Argument("Input", arg.index)
    if isinstance(arg, ResultArg):
        if arg.nested is None:
            return bcs.Argument("Result", arg.index)
        return bcs.Argument("NestedResult", (arg.index, arg.nested))
    raise InvalidArgument(f"not a command argument: {arg!r}")


def _bcs_command(bcs, cmd: Command):
    args = lambda xs: [_bcs_argument(bcs, a) for a in xs]  # noqa: E731
    if isinstance(cmd, MoveCall):
        call = bcs.ProgrammableMoveCall(
            _bcs_address(bcs, _address("package id", cmd.package)),
            cmd.module,
            cmd.function,
            [bcs.TypeTag.deserialize(t) for t in cmd.type_arguments],
            args(cmd.arguments),
        )
        return bcs.Command("MoveCall", call)
    if isinstance(cmd, MergeCoins):
        return bcs.Command("MergeCoins", bcs.MergeCoins(_bcs_argument(bcs, cmd.destination), args(cmd.sources)))
    if isinstance(cmd, SplitCoins):
        return bcs.Command("SplitCoin", bcs.SplitCoin(_bcs_argument(bcs, cmd.coin), args(cmd.amounts)))
    if isinstance(cmd, TransferObjects):
        return bcs.Command(
            "TransferObjects", bcs.TransferObjects(args(cmd.objects), _bcs_argument(bcs, cmd.address))
        )
    raise InvalidArgument(f"not a command: {cmd!r}")


def encode_transaction(tx: TransactionData) -> bytes:
    """BCS bytes of a :class:`TransactionData` (the inverse of :func:`decode_transaction`)."""
    bcs = bcs_classes()
    ptb = bcs.ProgrammableTransaction(
        [_bcs_input(bcs, i) for i in tx.inputs], [_bcs_command(bcs, c) for c in tx.commands]
    )
    gas = bcs.GasData(
        [_bcs_objref(bcs, r) for r in tx.gas.payment], _bcs_address(bcs, tx.gas.owner), tx.gas.price, tx.gas.budget
    )
    if tx.expiration_epoch is None:
        expiration = bcs.TransactionExpiration("None")
    else:
        expiration = bcs.TransactionExpiration("Epoch", _u64("expiration epoch", tx.expiration_epoch))
    data = bcs.TransactionDataV1(
        bcs.TransactionKind("ProgrammableTransaction", ptb),
        _bcs_address(bcs, _address("sender", tx.sender)),
        gas,
        expiration,
    )
    return bytes(bcs.TransactionData("V1", data).serialize())


def move_call_transaction(
    sender: str,
    package_id: str,
    function: str,
    args: dict[str, Any],
    *,
    db: SharedRef,
    random: SharedRef | None = None,
    objects: dict[str, OwnedRef] | None = None,
    merge_coins: list[OwnedRef] | None = None,
    gas: GasConfig,
) -> bytes:
    """BCS ``TransactionData`` calling ``<package_id>::db::<function>``.

    Args:
        sender: Signing address.
        package_id: The ``atoma`` package.
        function: A name in ``abi.ENTRY_FUNCTIONS``.
        args: Pure parameter name -> value, exactly the function's pure parameters.
        db: ``AtomaDb``; must be ``mutable``.
        random: The ``Random`` object ``0x8`` (immutable), for functions that take ``&Random``; else None.
        objects: Object parameter name (badge, ``wallet`` coin) -> owned reference, exactly those parameters.
        merge_coins: Extra USDC coins merged into the ``wallet`` coin by a ``MergeCoins`` before the call.
        gas: Gas owner, price, budget and payment coins.

    Raises:
        InvalidArgument: unknown function, a missing or unexpected argument or object, a value its type cannot
            hold, a wrong kind of reference, or the same object used twice.
    """
    params = abi.ENTRY_FUNCTIONS.get(function) if isinstance(function, str) else None
    if params is None:
        raise InvalidArgument(f"{function!r} is not an entry function of atoma::db")
    if not isinstance(db, SharedRef) or not db.mutable:
        raise InvalidArgument("db: AtomaDb must be a mutable SharedRef")
    if not isinstance(gas, GasConfig):
        raise InvalidArgument(f"gas: expected GasConfig, got {type(gas).__name__}")
    args = dict(args or {})
    objects = dict(objects or {})
    merge_coins = list(merge_coins or [])

    pure_names = {p.name for p in params if not p.is_object}
    object_names = {p.name for p in params if p.is_object and p.type != abi.RANDOM}
    takes_random = any(p.type == abi.RANDOM for p in params)
    for given, expected, what in ((args, pure_names, "argument"), (objects, object_names, "object")):
        missing, extra = sorted(expected - set(given)), sorted(set(given) - expected)
        if missing:
            raise InvalidArgument(f"{function}: missing {what}(s) {', '.join(missing)}")
        if extra:
            raise InvalidArgument(f"{function}: unexpected {what}(s) {', '.join(extra)}")
    if random is not None and not takes_random:
        raise InvalidArgument(f"{function} takes no &Random")

    inputs: list[Input] = [db]
    call_args: list[Argument] = [InputArg(0)]
    coin_index: int | None = None
    for p in params:
        if p.type == abi.RANDOM:
            if not isinstance(random, SharedRef):
                raise InvalidArgument(f"{function}: {p.name} needs the Random object (a SharedRef of 0x8)")
            if random.object_id != abi.RANDOM_OBJECT_ID or random.mutable:
                raise InvalidArgument(f"{p.name}: Random is the immutable shared object 0x8, got {random}")
            item: Input = random
        elif p.is_object:
            item = objects[p.name]
            if not isinstance(item, OwnedRef):
                raise InvalidArgument(f"{p.name}: expected OwnedRef, got {type(item).__name__}")
            if p.type == abi.USDC_COIN_MUT:
                coin_index = len(inputs)
        else:
            item = PureArg(encode_pure(p.type, args[p.name], name=p.name))
        call_args.append(InputArg(len(inputs)))
        inputs.append(item)

    commands: list[Command] = []
    if merge_coins:
        if coin_index is None:
            raise InvalidArgument(f"{function} takes no coin to merge into")
        for ref in merge_coins:
            if not isinstance(ref, OwnedRef):
                raise InvalidArgument(f"merge_coins: expected OwnedRef, got {type(ref).__name__}")
        first = len(inputs)
        inputs.extend(merge_coins)
        sources = tuple(InputArg(i) for i in range(first, len(inputs)))
        commands.append(MergeCoins(InputArg(coin_index), sources))
    commands.append(MoveCall(_address("package id", package_id), MODULE, function, tuple(call_args)))

    seen: set[str] = set()
    for item in [*inputs, *gas.payment]:
        if isinstance(item, (SharedRef, OwnedRef)):
            if item.object_id in seen:
                raise InvalidArgument(f"object {item.object_id} is used twice in one transaction")
            seen.add(item.object_id)

    tx = TransactionData(_address("sender", sender), gas, tuple(inputs), tuple(commands))
    return encode_transaction(tx)


