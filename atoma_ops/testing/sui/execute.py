"""The write side of the loopback Sui full node (:mod:`.node`): execution, simulation, transactions, events.

A TEST DOUBLE, served by :class:`~.node.LoopbackSuiNode` next to its reads:

- ``TransactionExecutionService``: ``ExecuteTransaction``, ``SimulateTransaction``
- ``LedgerService``: ``GetTransaction``, ``ListEvents`` (server-streaming)

Transactions come as BCS ``TransactionData`` in ``Transaction.bcs`` (structured transactions are refused) with
signatures as ``UserSignature.bcs`` (``flag ‖ signature ‖ public key``), which is what pysui sends. The bytes are
decoded with :func:`.txdecode.decode_transaction` and :func:`.txdecode.decode_entry_call`, mapped onto the
localnet's command dicts and run with :meth:`Localnet.execute_verified` under Sui's transaction digest.

Refused with ``INVALID_ARGUMENT`` (nothing recorded, nothing changes): bytes that do not decode or are not one
``atoma::db`` entry call (optionally after a ``MergeCoins`` into its coin); a missing signature, more than one, or
one not by the sender; gas not paid by the sender with exactly its current gas coin reference (id, version,
digest, see :func:`.objects.gas_coin_ref`), a gas price below the reference price or a budget above
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
import logging
from typing import Any, Awaitable, Callable

import base58
import grpclib.const
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui
from grpclib.exceptions import GRPCError

from atoma_ops.chain import codec
from atoma_ops.chain.digests import transaction_digest
from atoma_ops.chain.errors import (
    ChainError,
    ExecutionFailure,
    MoveAbort,
    MoveArithmeticError,
    NotFound,
    TransactionRejected,
)
from atoma_ops.chain.localnet.engine import Localnet, check_signature
from atoma_ops.chain.sui.txbuild import TransactionData
from atoma_ops.chain.types import TxResult
from atoma_ops.protocol import abi
from atoma_ops.wallet import normalize_address

from .effects import COMPUTATION_COST, STORAGE_COST, executed, recorded_transaction
from .events import event_cursor, list_events, parse_event_cursor
from .objects import (
    ATOMA_DB_INITIAL_SHARED_VERSION,
    PROTOCOL_ATTRIBUTES,
    RANDOM_INITIAL_SHARED_VERSION,
    REFERENCE_GAS_PRICE,
    gas_coin_ref,
    mask_fields,
    object_digest,
    refuse,
)
from .txdecode import decode_entry_call, decode_transaction

log = logging.getLogger("atoma_ops.testing.sui")

__all__ = [
    "COMPUTATION_COST",
    "ReplayedDraws",
    "STORAGE_COST",
    "TransactionService",
    "event_cursor",
    "parse_event_cursor",
]

_EXECUTE_FIELDS_DEFAULT = frozenset({"effects", "checkpoint"})
_GET_FIELDS_DEFAULT = frozenset({"digest"})
_SIMULATE_FIELDS_DEFAULT = frozenset({"effects"})

_EXEC = "/sui.rpc.v2.TransactionExecutionService/"
_LEDGER = "/sui.rpc.v2.LedgerService/"


def _request_bytes(transaction: sui.Transaction | None) -> bytes:
    if transaction is None or transaction.bcs is None or not transaction.bcs.value:
        raise refuse("transaction.bcs is required: the loopback node takes BCS TransactionData only")
    return bytes(transaction.bcs.value)


def _request_signatures(signatures: list[sui.UserSignature]) -> list[str]:
    out = []
    for signature in signatures:
        if signature.bcs is None or not signature.bcs.value:
            raise refuse("signatures must be given as bcs (flag ‖ signature ‖ public key)")
        out.append(base64.b64encode(bytes(signature.bcs.value)).decode())
    return out


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
            raise refuse(str(exc)) from None

    def commands_for(self, tx: TransactionData) -> list[dict]:
        """Check a decoded transaction against the live state; the localnet's commands for it."""
        net = self.net
        try:
            call = decode_entry_call(tx)
        except TransactionRejected as exc:
            raise refuse(str(exc)) from None
        package_id = normalize_address(net.package_id)
        if call.package_id != package_id:
            raise refuse(f"package {call.package_id} is not the Atoma package {package_id}")

        sender = tx.sender
        if tx.gas.owner != sender:
            raise refuse(f"gas owner {tx.gas.owner} is not the sender {sender}: sponsored transactions are not served")
        if tx.gas.price < REFERENCE_GAS_PRICE:
            raise refuse(f"gas price {tx.gas.price} is below the reference gas price {REFERENCE_GAS_PRICE}")
        if tx.gas.budget > PROTOCOL_ATTRIBUTES["max_tx_gas"]:
            raise refuse(f"gas budget {tx.gas.budget} is above max_tx_gas {PROTOCOL_ATTRIBUTES['max_tx_gas']}")
        gas_id, gas_version, gas_digest = gas_coin_ref(net, sender)
        if len(tx.gas.payment) != 1 or tx.gas.payment[0].object_id != gas_id:
            raise refuse(f"gas must be paid with exactly the sender's gas coin {gas_id}")
        paid = tx.gas.payment[0]
        if (paid.version, paid.digest) != (gas_version, gas_digest):
            raise refuse(
                f"gas coin {gas_id} is at version {gas_version} (digest {gas_digest}); "
                f"the transaction has version {paid.version} (digest {paid.digest}): stale object reference"
            )
        if tx.expiration_epoch is not None and tx.expiration_epoch < net.current_epoch():
            raise refuse(f"transaction expired in epoch {tx.expiration_epoch}")

        if call.db.object_id != normalize_address(net.db_id):
            raise refuse(f"{call.function}: the first argument must be the AtomaDb {net.db_id}")
        if call.db.initial_shared_version != ATOMA_DB_INITIAL_SHARED_VERSION:
            raise refuse(f"AtomaDb's initial shared version is {ATOMA_DB_INITIAL_SHARED_VERSION}, "
                          f"not {call.db.initial_shared_version}")
        if call.random is not None and call.random.initial_shared_version != RANDOM_INITIAL_SHARED_VERSION:
            raise refuse(f"Random's initial shared version is {RANDOM_INITIAL_SHARED_VERSION}, "
                          f"not {call.random.initial_shared_version}")
        for ref in [*call.objects.values(), *call.merge_coins]:
            row = net.get_object(ref.object_id)
            if row is None:
                raise refuse(f"object {ref.object_id} does not exist (deleted, or never created)")
            version = int(row["version"])
            if ref.version != version or ref.digest != object_digest(ref.object_id, version):
                raise refuse(
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
            raise refuse(str(exc)) from None
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
        return executed(self.net, result, fields=fields, gas_input_version=gas_version, tx_bytes=tx_bytes)


# --------------------------------------------------------------------------------------------------- gRPC
class TransactionService:
    """The write-side RPCs of a :class:`~.node.LoopbackSuiNode` (grpclib ``__mapping__``).

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
        fields = mask_fields(request.read_mask, _EXECUTE_FIELDS_DEFAULT)
        async with self.lock:
            executed = await asyncio.to_thread(self.writer.execute, tx_bytes, signatures, fields)
        return sui.ExecuteTransactionResponse(transaction=executed)

    async def _simulate(self, request: sui.SimulateTransactionRequest) -> sui.SimulateTransactionResponse:
        tx_bytes = _request_bytes(request.transaction)
        fields = mask_fields(request.read_mask, _SIMULATE_FIELDS_DEFAULT)
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
            raise refuse(f"invalid transaction digest {digest!r}")
        executed = recorded_transaction(self.reads, digest, mask_fields(request.read_mask, _GET_FIELDS_DEFAULT))
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
