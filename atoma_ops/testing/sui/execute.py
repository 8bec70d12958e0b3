"""The write side of the loopback Sui full node (:mod:`.loopback`): execution, simulation, transactions, events.

A TEST DOUBLE, served by :class:`~.loopback.LoopbackSuiNode` next to its reads:

- ``TransactionExecutionService``: ``ExecuteTransaction``, ``SimulateTransaction``
- ``LedgerService``: ``GetTransaction``, ``ListEvents`` (server-streaming)

Transactions come as BCS ``TransactionData`` in ``Transaction.bcs`` (structured transactions are refused) with
signatures as ``UserSignature.bcs`` (``flag ‖ signature ‖ public key``), which is what pysui sends. The bytes are
decoded with :func:`.txbuild.decode_transaction` and :func:`.txbuild.decode_entry_call`, mapped onto the
localnet's command dicts and run with :meth:`Localnet.execute_verified` under Sui's transaction digest.

Refused with ``INVALID_ARGUMENT`` (nothing recorded, nothing changes): bytes that do not decode or are not one
``atoma::db`` entry call (optionally after a ``MergeCoins`` into its coin); a missing signature, more than one, or
one not by the sender; gas not paid by the sender with exactly its current gas coin reference (id, version,
digest, see :func:`.loopback.gas_coin_ref`), a gas price below the reference price or a budget above
``max_tx_gas``; an expired transaction; a package other than the localnet's; an AtomaDb or Random with another id
or initial shared version; an owned input that does not exist or whose version or digest is stale; and anything
the localnet refuses before execution (an object the sender does not own, a wrong object type, a bad value).

Effects, for the adapter to read (``ExecutedTransaction``):

- ``effects.status.success``; on failure ``effects.status.error`` with ``command`` (the MoveCall's index) and
  ``kind`` ``MOVE_ABORT`` with ``abort.abort_code`` and ``abort.location`` (``package``, ``module``,
  ``function_name``): ``<package>``/``db``/the entry function for the contract's aborts, ``0x2``/``balance`` or
  ``dynamic_field`` and ``0x1``/``option`` or ``vector`` (no function name) for framework aborts. The u64 overflow
  the localnet raises as ``MoveArithmeticError`` is ``MOVE_PRIMITIVE_RUNTIME_ERROR`` (Sui's kind for Move's
  ``ARITHMETIC_ERROR``; this proto has no ARITHMETIC_ERROR kind) with ``description`` starting
  ``"ARITHMETIC_ERROR"`` and the location in ``abort.location`` without a code; the localnet's size-limit
  ``ExecutionFailure`` is ``OBJECT_TOO_BIG``. A failure is an answer, not a gRPC error.
- ``effects.gas_used``: fixed :data:`COMPUTATION_COST`, :data:`STORAGE_COST`, rebate 0 (nothing is charged).
- ``effects.changed_objects`` (sorted by id) and ``effects.gas_object``: the localnet's object changes
  (``id_operation`` CREATED/NONE/DELETED, output version, digest, owner, type) plus the sender's gas coin
  (input and output version and digest); ``lamport_version`` is the output version. Input versions of other
  objects are not served.
- ``events.events``: ``package_id`` and ``module`` of the call (``db``), ``sender``, ``event_type``
  (``<package>::db::<Name>``), ``json`` (the localnet's parsed JSON as a ``google.protobuf.Value``: u64 fields are
  decimal strings, plain numbers come back as floats), ``checkpoint``, ``transaction_digest``, ``event_index``.
- ``balance_changes``: USDC only (address, coin type ``<usdc package>::usdc::USDC``, signed decimal amount).
- ``checkpoint``: the transaction's ordinal on the localnet (each transaction is its own checkpoint);
  ``timestamp``; ``transaction`` (``bcs`` for BCS transactions, ``digest``, ``sender``); ``signatures``.
  ``objects`` (the output object set) is not served: read the objects with GetObject.

Read masks are honoured on top-level fields, with Sui's defaults: ``effects,checkpoint`` for ExecuteTransaction,
``digest`` for GetTransaction, ``effects`` for SimulateTransaction. pysui asks for ``*``.

The same bytes again return the first execution's effects (a recorded failure too); the signature is checked
before that, as a validator does. ``SimulateTransaction`` applies the same decoding and checks but needs no
signature and keeps nothing (:meth:`Localnet.simulate`); ``do_gas_selection`` and ``checks`` are ignored.

With scripted randomness (``LoopbackSuiNode(..., rng=...)``, tests), the writer's draws go through
:class:`ReplayedDraws`: a simulation draws what its execution would, and the execution that follows gets the same
draws again instead of new ones (without scripted randomness, the localnet's persisted seeded stream does this by
itself: the simulation's draws are rolled back with everything else).

``ListEvents`` serves the localnet's events (all emitted by the Atoma package) in ledger order. The opaque cursor
(``Watermark.cursor``, ``QueryOptions.after``/``before``) is :func:`event_cursor`: ``0x02 ‖ u64-BE checkpoint
(the transaction's ordinal) ‖ u32-BE event index``. A frame per event carries the event and a watermark at it;
the last frame carries ``end``: ``ITEM_LIMIT`` on the last item when ``options.limit`` (default 50, at most 1000)
is reached, else an item-less frame with ``LEDGER_TIP``, ``CHECKPOINT_BOUND`` (``end_checkpoint``) or
``CURSOR_BOUND`` (``before``) and the frontier cursor. Pass the last cursor as ``options.after`` to resume.
Filters: terms of ``sender``, ``emit_module`` (``0xpkg`` or ``0xpkg::db``) and ``event_type`` literals, negation
included; ``event_stream_head`` and descending order are not served.

Writes run on the node's own Localnet connection in a worker thread, one at a time (an asyncio lock).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import logging
from typing import Any, Awaitable, Callable

import base58
import betterproto2
import grpclib.const
from grpclib.exceptions import GRPCError

import pysui.sui.sui_grpc.suimsgs.google.protobuf as pb
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui

from ...protocol import abi
from ...wallet import normalize_address
from .. import codec
from .._json import loads
from ..errors import (
    ChainError,
    ExecutionFailure,
    MoveAbort,
    MoveArithmeticError,
    NotFound,
    TransactionRejected,
    abort_from_json,
)
from ..localnet.engine import SHARED, Localnet, check_signature
from ..types import ObjectChange, TxResult
from .loopback import (
    ATOMA_DB_INITIAL_SHARED_VERSION,
    GAS_COIN_TYPE,
    PROTOCOL_ATTRIBUTES,
    RANDOM_INITIAL_SHARED_VERSION,
    REFERENCE_GAS_PRICE,
    _mask,
    _sent_count,
    _utc,
    canonical_type,
    gas_coin_id,
    gas_coin_ref,
    object_digest,
)
from .txbuild import TransactionData, decode_entry_call, decode_transaction, transaction_digest

log = logging.getLogger("atoma_ops.chain.sui.loopback")

__all__ = [
    "COMPUTATION_COST",
    "ReplayedDraws",
    "STORAGE_COST",
    "TransactionService",
    "event_cursor",
    "parse_event_cursor",
]

#: The gas summary every execution and simulation reports (MIST); nothing is charged.
COMPUTATION_COST = 1_000_000
STORAGE_COST = 2_000_000
STORAGE_REBATE = 0

DEFAULT_EVENT_LIMIT = 50
MAX_EVENT_LIMIT = 1000
_SCAN_CHUNK = 256
_CURSOR_TAG = b"\x02"
_MAX_EVENT_INDEX = 2**32 - 1

_EXECUTE_FIELDS_DEFAULT = frozenset({"effects", "checkpoint"})
_GET_FIELDS_DEFAULT = frozenset({"digest"})
_SIMULATE_FIELDS_DEFAULT = frozenset({"effects"})
#: Where the framework modules the contract can abort in live.
_FRAMEWORK_PACKAGES = {"balance": "0x2", "coin": "0x2", "dynamic_field": "0x2", "option": "0x1", "vector": "0x1"}

_EXEC = "/sui.rpc.v2.TransactionExecutionService/"
_LEDGER = "/sui.rpc.v2.LedgerService/"
_Kind = sui.ExecutionErrorExecutionErrorKind
_Op = sui.ChangedObjectIdOperation
_In = sui.ChangedObjectInputObjectState
_Out = sui.ChangedObjectOutputObjectState


def event_cursor(checkpoint: int, event_index: int) -> bytes:
    """The ListEvents cursor of a ledger position: ``0x02 ‖ u64-BE checkpoint ‖ u32-BE event index``."""
    return _CURSOR_TAG + int(checkpoint).to_bytes(8, "big") + int(event_index).to_bytes(4, "big")


def parse_event_cursor(cursor: bytes) -> tuple[int, int]:
    """``(checkpoint, event index)`` of a :func:`event_cursor`; ValueError for anything else."""
    raw = bytes(cursor)
    if len(raw) != 13 or raw[:1] != _CURSOR_TAG:
        raise ValueError("not a loopback event cursor")
    return int.from_bytes(raw[1:9], "big"), int.from_bytes(raw[9:], "big")


def _refuse(message: str) -> GRPCError:
    return GRPCError(grpclib.const.Status.INVALID_ARGUMENT, message)


def _hash(tag: bytes, *parts: str) -> str:
    return base58.b58encode(hashlib.blake2b(tag + "|".join(parts).encode(), digest_size=32).digest()).decode()


def _request_bytes(transaction: sui.Transaction | None) -> bytes:
    if transaction is None or transaction.bcs is None or not transaction.bcs.value:
        raise _refuse("transaction.bcs is required: the loopback node takes BCS TransactionData only")
    return bytes(transaction.bcs.value)


def _request_signatures(signatures: list[sui.UserSignature]) -> list[str]:
    out = []
    for signature in signatures:
        if signature.bcs is None or not signature.bcs.value:
            raise _refuse("signatures must be given as bcs (flag ‖ signature ‖ public key)")
        out.append(base64.b64encode(bytes(signature.bcs.value)).decode())
    return out


# --------------------------------------------------------------------------------------------------- messages
def _owner(owner: str) -> sui.Owner | None:
    if owner == SHARED:
        return sui.Owner(kind=sui.OwnerOwnerKind.SHARED, version=ATOMA_DB_INITIAL_SHARED_VERSION)
    if owner == "immutable":
        return sui.Owner(kind=sui.OwnerOwnerKind.IMMUTABLE)
    if owner.startswith("0x"):
        return sui.Owner(kind=sui.OwnerOwnerKind.ADDRESS, address=owner)
    return None  # wrapped


def _changed_object(change: ObjectChange) -> sui.ChangedObject:
    out = sui.ChangedObject(object_id=change.object_id, object_type=change.type)
    if change.change == "deleted":
        out.input_state, out.output_state, out.id_operation = _In.EXISTS, _Out.DOES_NOT_EXIST, _Op.DELETED
        out.input_owner = _owner(change.owner)  # who held it before, as Sui reports for a deleted object
        return out
    out.input_state = _In.DOES_NOT_EXIST if change.change == "created" else _In.EXISTS
    out.id_operation = _Op.CREATED if change.change == "created" else _Op.NONE
    out.output_state = _Out.OBJECT_WRITE
    out.output_version = change.version
    out.output_digest = object_digest(change.object_id, change.version)
    out.output_owner = _owner(change.owner)
    return out


def _gas_object(sender: str, input_version: int) -> sui.ChangedObject:
    object_id, output_version = gas_coin_id(sender), input_version + 1
    owner = sui.Owner(kind=sui.OwnerOwnerKind.ADDRESS, address=sender)
    return sui.ChangedObject(
        object_id=object_id, object_type=GAS_COIN_TYPE,
        input_state=_In.EXISTS, input_version=input_version,
        input_digest=object_digest(object_id, input_version), input_owner=owner,
        output_state=_Out.OBJECT_WRITE, output_version=output_version,
        output_digest=object_digest(object_id, output_version), output_owner=owner,
        id_operation=_Op.NONE,
    )


def _status(error: dict | None, package_id: str, command: int | None, function: str | None) -> sui.ExecutionStatus:
    if error is None:
        return sui.ExecutionStatus(success=True)
    kind = error.get("kind")
    description = str(abort_from_json(error))
    out = sui.ExecutionError(description=description, command=command)
    if kind == "MoveAbort":
        module = error.get("module", "")
        if module == "db":
            location = sui.MoveLocation(package=package_id, module=module,
                                        function_name=error.get("function") or function)
        else:
            package = normalize_address(_FRAMEWORK_PACKAGES.get(module, "0x2"))
            location = sui.MoveLocation(package=package, module=module)
        out.kind = _Kind.MOVE_ABORT
        out.abort = sui.MoveAbort(abort_code=int(error["code"]), location=location)
    elif kind == "ArithmeticError":
        out.kind = _Kind.MOVE_PRIMITIVE_RUNTIME_ERROR
        out.description = f"ARITHMETIC_ERROR: {error.get('message', '')}"
        out.abort = sui.MoveAbort(location=sui.MoveLocation(package=package_id, module="db", function_name=function))
    elif kind == "ExecutionError":
        out.kind = _Kind.OBJECT_TOO_BIG
    else:
        out.kind = _Kind.EXECUTION_ERROR_KIND_UNKNOWN
    return sui.ExecutionStatus(success=False, error=out)


def _call_site(tx_bytes: bytes) -> tuple[int | None, str | None]:
    """(index, function) of a transaction's last MoveCall: BCS, or the localnet's own JSON transactions."""
    try:
        if tx_bytes[:1] == b"{":
            commands = loads(tx_bytes).get("commands") or []
            calls = [(i, c.get("function")) for i, c in enumerate(commands) if c.get("kind") == "MoveCall"]
        else:
            commands = decode_transaction(tx_bytes).commands
            calls = [(i, c.function) for i, c in enumerate(commands) if hasattr(c, "function")]
    except (ChainError, ValueError, TypeError, AttributeError):
        return None, None
    return calls[-1] if calls else (None, None)


def _event_message(
    package_id: str, sender: str, type_: str, parsed_json: dict, checkpoint: int | None, digest: str, index: int,
    fields: frozenset[str] | None,
) -> sui.Event:
    def want(name: str) -> bool:
        return fields is None or name in fields

    out = sui.Event()
    if want("package_id"):
        out.package_id = package_id
    if want("module"):
        out.module = "db"
    if want("sender"):
        out.sender = sender
    if want("event_type"):
        out.event_type = type_
    if want("json"):
        out.json = pb.Value.from_dict(parsed_json)
    if want("checkpoint") and checkpoint is not None:
        out.checkpoint = checkpoint
    if want("transaction_digest"):
        out.transaction_digest = digest
    if want("transaction_index") and checkpoint is not None:
        out.transaction_index = 0  # one transaction per checkpoint
    if want("event_index"):
        out.event_index = index
    return out


def _executed(
    net: Localnet, result: TxResult, *, fields: frozenset[str] | None, gas_input_version: int,
    checkpoint: int | None = None, tx_bytes: bytes | None = None, signatures: list[str] | None = None,
) -> sui.ExecutedTransaction:
    """An ``ExecutedTransaction`` for a localnet result (recorded, or simulated when ``checkpoint`` is None)."""

    def want(name: str) -> bool:
        return fields is None or name in fields

    package_id = normalize_address(net.package_id)
    out = sui.ExecutedTransaction()
    if want("digest"):
        out.digest = result.digest
    if want("transaction"):
        tx = sui.Transaction(digest=result.digest, sender=result.sender)
        if tx_bytes and tx_bytes[:1] != b"{":  # the localnet's own transactions are canonical JSON, not BCS
            tx.bcs = sui.Bcs(name="TransactionData", value=bytes(tx_bytes))
        out.transaction = tx
    if want("signatures") and signatures:
        out.signatures = [
            sui.UserSignature(bcs=sui.Bcs(name="UserSignature", value=base64.b64decode(s))) for s in signatures
        ]
    if want("effects"):
        command, function = (None, None)
        if not result.ok and tx_bytes:
            command, function = _call_site(bytes(tx_bytes))
        gas = _gas_object(result.sender, gas_input_version)
        changed = sorted([_changed_object(c) for c in result.object_changes] + [gas], key=lambda c: c.object_id)
        events_digest = _hash(b"TransactionEvents::", result.digest) if result.events else None
        out.effects = sui.TransactionEffects(
            digest=_hash(b"TransactionEffects::", result.digest, result.status),
            version=2,
            status=_status(result.error, package_id, command, function),
            epoch=result.epoch,
            gas_used=sui.GasCostSummary(
                computation_cost=COMPUTATION_COST, storage_cost=STORAGE_COST,
                storage_rebate=STORAGE_REBATE, non_refundable_storage_fee=0,
            ),
            transaction_digest=result.digest,
            gas_object=gas,
            events_digest=events_digest,
            lamport_version=max((c.output_version or 0) for c in changed),
            changed_objects=changed,
        )
    if want("events"):
        out.events = sui.TransactionEvents(
            digest=_hash(b"TransactionEvents::", result.digest) if result.events else None,
            events=[
                _event_message(package_id, e.sender, e.type, e.parsed_json, checkpoint, e.id.tx_digest,
                               e.id.event_seq, None)
                for e in result.events
            ],
        )
    if want("checkpoint") and checkpoint is not None:
        out.checkpoint = checkpoint
    if want("timestamp") and checkpoint is not None:
        out.timestamp = _utc(result.timestamp_ms)
    if want("balance_changes"):
        out.balance_changes = [
            sui.BalanceChange(address=address, coin_type=net.usdc_type, amount=str(delta))
            for address, delta in result.balance_changes.items()
        ]
    if want("transaction_index") and checkpoint is not None:
        out.transaction_index = 0
    return out


def recorded_transaction(net: Localnet, digest: str, fields: frozenset[str] | None) -> sui.ExecutedTransaction | None:
    """The ``ExecutedTransaction`` of a transaction the localnet has recorded, or None for an unknown digest."""
    row = net.conn.execute(
        "SELECT seq, sender, tx_bytes, signatures FROM transactions WHERE digest = ?", (digest,)
    ).fetchone()
    if row is None:
        return None
    seq, sender, tx_bytes, signatures = row
    result = net.get_transaction(digest)
    assert result is not None
    return _executed(
        net, result, fields=fields, gas_input_version=1 + _sent_count(net.conn, sender, before_seq=seq),
        checkpoint=int(seq), tx_bytes=bytes(tx_bytes), signatures=loads(signatures),
    )


# --------------------------------------------------------------------------------------------------- writes
class ReplayedDraws:
    """Scripted randomness (a callable returning u64 draws) for the node's writer, replayed from simulation to
    execution.

    A client simulates a call, then executes it: a test scripts one set of draws for the call, not two. The draws a
    successful simulation takes are kept and handed out again, in order, before any new draw, so the execution
    sees exactly what the simulation saw. A simulation that fails stands for a failed execution, which the client
    will not submit: its draws are spent, as the localnet spends the draws of a call that aborts.
    """

    def __init__(self, rng: Callable[[], int]):
        self.rng = rng
        self.kept: collections.deque[int] = collections.deque()
        self._simulating: int | None = None  # draws taken by the running simulation

    def __call__(self) -> int:
        if self._simulating is None:
            return self.kept.popleft() if self.kept else self.rng()
        index, self._simulating = self._simulating, self._simulating + 1
        if index == len(self.kept):
            self.kept.append(self.rng())
        return self.kept[index]

    def simulate(self, run: Callable[[], TxResult]) -> TxResult:
        """``run()`` (a simulation) with its draws kept for the next execution if it succeeds, spent if not."""
        self._simulating, succeeded = 0, False
        try:
            result = run()
            succeeded = result.ok
            return result
        finally:
            taken, self._simulating = self._simulating, None
            if not succeeded:
                for _ in range(taken):
                    self.kept.popleft()


class _Writer:
    """Decodes, checks and runs transactions on its own Localnet connection (worker threads, one at a time)."""

    def __init__(self, localnet: Localnet):
        self.net = localnet

    def close(self) -> None:
        self.net.close()

    @staticmethod
    def decode(tx_bytes: bytes) -> TransactionData:
        try:
            return decode_transaction(tx_bytes)
        except TransactionRejected as exc:
            raise _refuse(str(exc)) from None

    def commands_for(self, tx: TransactionData) -> list[dict]:
        """Check a decoded transaction against the live state; the localnet's commands for it."""
        net = self.net
        try:
            call = decode_entry_call(tx)
        except TransactionRejected as exc:
            raise _refuse(str(exc)) from None
        package_id = normalize_address(net.package_id)
        if call.package_id != package_id:
            raise _refuse(f"package {call.package_id} is not the Atoma package {package_id}")

        sender = tx.sender
        if tx.gas.owner != sender:
            raise _refuse(f"gas owner {tx.gas.owner} is not the sender {sender}: sponsored transactions are not served")
        if tx.gas.price < REFERENCE_GAS_PRICE:
            raise _refuse(f"gas price {tx.gas.price} is below the reference gas price {REFERENCE_GAS_PRICE}")
        if tx.gas.budget > PROTOCOL_ATTRIBUTES["max_tx_gas"]:
            raise _refuse(f"gas budget {tx.gas.budget} is above max_tx_gas {PROTOCOL_ATTRIBUTES['max_tx_gas']}")
        gas_id, gas_version, gas_digest = gas_coin_ref(net, sender)
        if len(tx.gas.payment) != 1 or tx.gas.payment[0].object_id != gas_id:
            raise _refuse(f"gas must be paid with exactly the sender's gas coin {gas_id}")
        paid = tx.gas.payment[0]
        if (paid.version, paid.digest) != (gas_version, gas_digest):
            raise _refuse(
                f"gas coin {gas_id} is at version {gas_version} (digest {gas_digest}); "
                f"the transaction has version {paid.version} (digest {paid.digest}): stale object reference"
            )
        if tx.expiration_epoch is not None and tx.expiration_epoch < net.current_epoch():
            raise _refuse(f"transaction expired in epoch {tx.expiration_epoch}")

        if call.db.object_id != normalize_address(net.db_id):
            raise _refuse(f"{call.function}: the first argument must be the AtomaDb {net.db_id}")
        if call.db.initial_shared_version != ATOMA_DB_INITIAL_SHARED_VERSION:
            raise _refuse(f"AtomaDb's initial shared version is {ATOMA_DB_INITIAL_SHARED_VERSION}, "
                          f"not {call.db.initial_shared_version}")
        if call.random is not None and call.random.initial_shared_version != RANDOM_INITIAL_SHARED_VERSION:
            raise _refuse(f"Random's initial shared version is {RANDOM_INITIAL_SHARED_VERSION}, "
                          f"not {call.random.initial_shared_version}")
        for ref in [*call.objects.values(), *call.merge_coins]:
            row = net.get_object(ref.object_id)
            if row is None:
                raise _refuse(f"object {ref.object_id} does not exist (deleted, or never created)")
            version = int(row["version"])
            if ref.version != version or ref.digest != object_digest(ref.object_id, version):
                raise _refuse(
                    f"object {ref.object_id} is at version {version}; the transaction has version {ref.version} "
                    f"(digest {ref.digest}): stale object reference"
                )

        arguments: list[Any] = [net.db_id]
        coin_param = None
        for p in abi.ENTRY_FUNCTIONS[call.function]:
            if p.type == abi.RANDOM:
                arguments.append(abi.RANDOM_OBJECT_ID)
            elif p.is_object:
                arguments.append(call.objects[p.name].object_id)
                if p.type == abi.USDC_COIN_MUT:
                    coin_param = p.name
            else:
                arguments.append(codec.to_wire(p.type, call.args[p.name]))
        commands: list[dict] = []
        if call.merge_coins:
            assert coin_param is not None  # decode_entry_call checked the merge goes into the coin argument
            commands.append({
                "kind": "MergeCoins", "destination": call.objects[coin_param].object_id,
                "sources": [r.object_id for r in call.merge_coins],
            })
        commands.append(
            {"kind": "MoveCall", "package": net.package_id, "module": "db", "function": call.function,
             "arguments": arguments}
        )
        return commands

    def execute(self, tx_bytes: bytes, signatures: list[str], fields: frozenset[str] | None) -> sui.ExecutedTransaction:
        tx = self.decode(tx_bytes)
        try:
            check_signature(tx_bytes, signatures, tx.sender)
        except TransactionRejected as exc:
            raise _refuse(str(exc)) from None
        digest = transaction_digest(tx_bytes)
        if self.net.get_transaction(digest) is None:
            try:
                commands = self.commands_for(tx)
            except GRPCError:
                if self.net.get_transaction(digest) is None:  # not executed meanwhile by another process
                    raise
            else:
                try:
                    self.net.execute_verified(digest, tx.sender, commands, tx_bytes, signatures)
                except (MoveAbort, MoveArithmeticError, ExecutionFailure):
                    pass  # recorded under the digest: reported as failed effects
        out = recorded_transaction(self.net, digest, fields)
        assert out is not None
        return out

    def simulate(self, tx_bytes: bytes, fields: frozenset[str] | None) -> sui.ExecutedTransaction:
        tx = self.decode(tx_bytes)
        commands = self.commands_for(tx)
        gas_version = gas_coin_ref(self.net, tx.sender)[1]

        def run() -> TxResult:
            return self.net.simulate(tx.sender, commands, digest=transaction_digest(tx_bytes))

        result = self.net.rng.simulate(run) if isinstance(self.net.rng, ReplayedDraws) else run()
        return _executed(self.net, result, fields=fields, gas_input_version=gas_version, tx_bytes=tx_bytes)


# --------------------------------------------------------------------------------------------------- events
def _event_predicate(flt: sui.EventFilter | None, package_id: str) -> Callable[[str, str], bool]:
    """``(sender, event type) -> bool`` for an EventFilter. Every event of the localnet is emitted by
    ``<package_id>::db``, so ``emit_module`` literals compare with that."""
    if flt is None:
        return lambda sender, type_: True
    if not flt.terms:
        raise _refuse("an event filter must have at least one term")
    terms = []
    for term in flt.terms:
        if not term.literals:
            raise _refuse("an event filter term must have at least one literal")
        terms.append([_literal(lit, package_id) for lit in term.literals])
    return lambda sender, type_: any(all(lit(sender, type_) for lit in term) for term in terms)


def _parse_path(text: str | None, what: str) -> list[str]:
    if not text:
        raise _refuse(f"{what} is required")
    head, sep, rest = text.strip().partition("::")
    try:
        address = normalize_address(head)
    except ValueError:
        raise _refuse(f"invalid {what} {text!r}") from None
    return [address] + (rest.split("::") if sep else [])


def _literal(lit: sui.EventLiteral, package_id: str) -> Callable[[str, str], bool]:
    which, value = betterproto2.which_one_of(lit, "predicate")
    if which == "sender":
        try:
            address = normalize_address(value.address or "")
        except ValueError:
            raise _refuse(f"invalid sender {value.address!r}") from None
        test = lambda sender, type_: sender == address  # noqa: E731
    elif which == "emit_module":
        parts = _parse_path(value.module, "emit_module.module")
        if len(parts) > 2:
            raise _refuse(f"emit_module {value.module!r} is not package[::module]")
        emitter = [package_id, "db"]
        test = lambda sender, type_: emitter[: len(parts)] == parts  # noqa: E731
    elif which == "event_type":
        wanted = (value.event_type or "").strip()
        if "<" in wanted:
            exact = canonical_type(wanted)
            test = lambda sender, type_: canonical_type(type_) == exact  # noqa: E731
        else:
            parts = _parse_path(wanted, "event_type.event_type")
            if len(parts) > 3:
                raise _refuse(f"invalid event_type {wanted!r}")
            test = lambda sender, type_: canonical_type(type_).split("<", 1)[0].split("::")[: len(parts)] == parts  # noqa: E731
    elif which == "event_stream_head":
        raise GRPCError(grpclib.const.Status.UNIMPLEMENTED, "event_stream_head filters are not served")
    else:
        raise _refuse("an event literal needs a predicate")
    if lit.negated:
        return lambda sender, type_: not test(sender, type_)
    return test


def list_events(net: Localnet, request: sui.ListEventsRequest) -> list[sui.ListEventsResponse]:
    """Every frame of one ListEvents response (at most ``limit`` events + 1)."""
    options = request.options or sui.QueryOptions()
    if options.ordering == sui.Ordering.DESCENDING:
        raise GRPCError(grpclib.const.Status.UNIMPLEMENTED, "descending ListEvents is not served by the loopback node")
    limit = min(int(options.limit or DEFAULT_EVENT_LIMIT), MAX_EVENT_LIMIT)
    try:
        after = parse_event_cursor(options.after) if options.after else None
        before = parse_event_cursor(options.before) if options.before else None
    except ValueError:
        raise _refuse("invalid cursor in options.after/before") from None
    package_id = normalize_address(net.package_id)
    matches = _event_predicate(request.filter, package_id)
    fields = _mask(request.read_mask, None)  # type: ignore[arg-type]

    tip = int(net.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM transactions").fetchone()[0])
    start = int(request.start_checkpoint or 0)
    stop = tip + 1 if request.end_checkpoint is None else min(int(request.end_checkpoint), tip + 1)  # exclusive
    lo = max(after or (-1, _MAX_EVENT_INDEX), (start - 1, _MAX_EVENT_INDEX))  # exclusive lower position
    first_full = lo[0] + 1  # the first checkpoint this scan covers whole

    def watermark(position: tuple[int, int], covered: int) -> sui.Watermark:
        return sui.Watermark(cursor=event_cursor(*position),
                             checkpoint=covered if covered >= first_full else None)

    frames: list[sui.ListEventsResponse] = []
    found = 0
    cursor = lo
    while True:
        rows = net.conn.execute(
            "SELECT t.seq, e.event_seq, e.tx_digest, e.type, e.sender, e.parsed_json "
            "FROM events e JOIN transactions t ON t.digest = e.tx_digest "
            "WHERE (t.seq > ?1 OR (t.seq = ?1 AND e.event_seq > ?2)) AND t.seq < ?3 "
            "ORDER BY t.seq, e.event_seq LIMIT ?4",
            (cursor[0], cursor[1], stop, _SCAN_CHUNK),
        ).fetchall()
        for checkpoint, index, digest, type_, sender, parsed in rows:
            position = (int(checkpoint), int(index))
            if before is not None and position >= before:
                frames.append(sui.ListEventsResponse(
                    watermark=watermark(before, before[0] - 1),
                    end=sui.QueryEnd(reason=sui.QueryEndReason.CURSOR_BOUND),
                ))
                return frames
            if not matches(sender, type_):
                continue
            event = _event_message(package_id, sender, type_, loads(parsed), position[0], digest, position[1], fields)
            frame = sui.ListEventsResponse(event=event, watermark=watermark(position, position[0] - 1))
            frames.append(frame)
            found += 1
            if found == limit:
                frame.end = sui.QueryEnd(reason=sui.QueryEndReason.ITEM_LIMIT)
                return frames
        if len(rows) < _SCAN_CHUNK:
            break
        cursor = (int(rows[-1][0]), int(rows[-1][1]))
    last = stop - 1
    if before is not None and before <= (last, _MAX_EVENT_INDEX):
        reason, frontier, covered = sui.QueryEndReason.CURSOR_BOUND, before, before[0] - 1
    else:
        bounded = request.end_checkpoint is not None and int(request.end_checkpoint) <= tip + 1
        reason = sui.QueryEndReason.CHECKPOINT_BOUND if bounded else sui.QueryEndReason.LEDGER_TIP
        frontier, covered = (last, _MAX_EVENT_INDEX), last
    frontier = max(frontier, lo)  # never behind where the caller resumed
    frames.append(sui.ListEventsResponse(watermark=watermark(frontier, covered), end=sui.QueryEnd(reason=reason)))
    return frames


# --------------------------------------------------------------------------------------------------- gRPC
class TransactionService:
    """The write-side RPCs of a :class:`~.loopback.LoopbackSuiNode` (grpclib ``__mapping__``).

    Args:
        node: the node (its ``calls`` log).
        reads: the node's read connection (GetTransaction, ListEvents; on the event loop).
        writer: a Localnet connection of its own for ExecuteTransaction and SimulateTransaction (worker threads,
            one at a time); closed by :meth:`close`.
    """

    def __init__(self, node: Any, reads: Localnet, writer: Localnet):
        self.node = node
        self.reads = reads
        self.writer = _Writer(writer)
        self.lock = asyncio.Lock()

    def close(self) -> None:
        self.writer.close()

    async def _execute(self, request: sui.ExecuteTransactionRequest) -> sui.ExecuteTransactionResponse:
        tx_bytes = _request_bytes(request.transaction)
        signatures = _request_signatures(request.signatures)
        fields = _mask(request.read_mask, _EXECUTE_FIELDS_DEFAULT)
        async with self.lock:
            executed = await asyncio.to_thread(self.writer.execute, tx_bytes, signatures, fields)
        return sui.ExecuteTransactionResponse(transaction=executed)

    async def _simulate(self, request: sui.SimulateTransactionRequest) -> sui.SimulateTransactionResponse:
        tx_bytes = _request_bytes(request.transaction)
        fields = _mask(request.read_mask, _SIMULATE_FIELDS_DEFAULT)
        async with self.lock:
            executed = await asyncio.to_thread(self.writer.simulate, tx_bytes, fields)
        return sui.SimulateTransactionResponse(transaction=executed, suggested_gas_price=REFERENCE_GAS_PRICE)

    async def _get_transaction(self, request: sui.GetTransactionRequest) -> sui.GetTransactionResponse:
        digest = request.digest or ""
        try:
            valid = len(base58.b58decode(digest)) == 32
        except ValueError:
            valid = False
        if not valid:
            raise _refuse(f"invalid transaction digest {digest!r}")
        executed = recorded_transaction(self.reads, digest, _mask(request.read_mask, _GET_FIELDS_DEFAULT))
        if executed is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"transaction {digest} not found")
        return sui.GetTransactionResponse(transaction=executed)

    async def _list_events(self, request: sui.ListEventsRequest) -> list[sui.ListEventsResponse]:
        return list_events(self.reads, request)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        return {
            _EXEC + "ExecuteTransaction": grpclib.const.Handler(
                self._handler("ExecuteTransaction", self._execute, False), unary,
                sui.ExecuteTransactionRequest, sui.ExecuteTransactionResponse),
            _EXEC + "SimulateTransaction": grpclib.const.Handler(
                self._handler("SimulateTransaction", self._simulate, False), unary,
                sui.SimulateTransactionRequest, sui.SimulateTransactionResponse),
            _LEDGER + "GetTransaction": grpclib.const.Handler(
                self._handler("GetTransaction", self._get_transaction, False), unary,
                sui.GetTransactionRequest, sui.GetTransactionResponse),
            _LEDGER + "ListEvents": grpclib.const.Handler(
                self._handler("ListEvents", self._list_events, True), grpclib.const.Cardinality.UNARY_STREAM,
                sui.ListEventsRequest, sui.ListEventsResponse),
        }

    def _handler(self, name: str, fn: Callable[[Any], Awaitable[Any]], streaming: bool) -> Callable[[Any], Awaitable[None]]:
        async def handle(stream: Any) -> None:
            request = await stream.recv_message()
            self.node.calls.append(name)
            try:
                reply = await fn(request)
            except GRPCError:
                raise
            except NotFound as exc:
                raise GRPCError(grpclib.const.Status.NOT_FOUND, str(exc)) from None
            except ChainError as exc:  # refused by the localnet before execution
                raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, str(exc)) from None
            except Exception as exc:  # a bug in the double: say so to the client, keep serving
                log.exception("%s failed", name)
                raise GRPCError(grpclib.const.Status.INTERNAL, f"{type(exc).__name__}: {exc}") from None
            for message in (reply if streaming else [reply]):
                await stream.send_message(message)

        return handle
