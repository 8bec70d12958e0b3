"""The Chain port on a Sui full node, through pysui's gRPC client (``sui.rpc.v2``).

:class:`SuiChain` behaves like :class:`~atoma_ops.chain.localnet.adapter.LocalnetChain` from the caller's view: the
same methods and argument names, badges and USDC coins found the same way when not given (a small-id hint such as
``node_small_id`` picks among several badges; every USDC coin is merged into the first before paying), the same
argument checks (:func:`atoma_ops.chain.codec.check_value`), the same errors and abort names.

Reads
    ``current_epoch`` (GetEpoch); ``db_config`` and the table reads through :mod:`.tables` (the AtomaDb object is
    read on every ``db_config``; its table references are kept after the first read, they never change);
    ``usdc_coins``/``badges`` (ListOwnedObjects with a type filter); ``get_transaction`` (GetTransaction, None when
    the node says NOT_FOUND or the digest is not a digest).

Events
    ``events(cursor, limit)`` reads ``ListEvents`` filtered to the ``<package>::db`` event types (the package that
    defined the types, as the AtomaDb object's type names it), ascending. The port's cursor is Sui's event id
    ``(tx digest, event seq)``; the node's cursor is opaque. Every event listed is remembered with the node cursor of
    its stream frame (a bounded map), so paging forward never needs more than one ListEvents per page. A cursor that
    is not in the map (another process wrote it, e.g. the ledger's persisted cursor) is located once: GetTransaction
    gives the transaction's checkpoint, and a ListEvents bounded to that checkpoint finds the frame of that event.
    Events carry no timestamp or epoch: both come from GetTransaction, once per distinct digest (results are cached,
    bounded; a transaction's effects never change once it is in a checkpoint).

Writes
    ``prepare`` reads everything afresh (never cached across transactions, so a gas coin is never reused at a stale
    version — Sui would refuse it, or lock it on equivocation): the AtomaDb and Random (``0x8``) shared references
    (their initial shared versions are constant and cached), the badges and coins with their current versions and
    digests, the sender's SUI coins and the reference gas price (GetEpoch). It builds the transaction with the
    network's ``gas_budget_cap`` as budget (or the SUI the sender holds, if less), runs ``SimulateTransaction``
    (no gas selection), and rebuilds with ``min(cap, ceil(1.5 × (computation + storage)))`` — the storage rebate is
    not subtracted, so the budget stays on the safe side. A simulation that aborts raises the mapped error at once:
    nothing is signed or submitted, and the error has no digest. ``build_transaction`` builds with a given budget
    and no simulation.

    ``execute`` submits with ExecuteTransaction. Failed effects raise :class:`MoveAbort` (module ``db`` for the Atoma
    package, else the framework module; the name from :func:`atoma_ops.protocol.aborts.name_of`),
    :class:`MoveArithmeticError` (``MOVE_PRIMITIVE_RUNTIME_ERROR``, Sui's kind for ``ARITHMETIC_ERROR``) or
    :class:`ExecutionFailure`, each with ``.digest`` set. A gRPC ``INVALID_ARGUMENT`` refusal is
    :class:`TransactionRejected` (nothing recorded). Any other gRPC status, a timeout or a dropped connection is
    re-raised as it is (``grpclib.exceptions.GRPCError``, ``asyncio.TimeoutError``, ``OSError``): the bytes may or may
    not have arrived, which the intent journal treats as "in doubt" and resolves by digest.

    One transaction per sender at a time: every transaction of a sender pays gas with the sender's coin and uses its
    badges at their current versions, so a second transaction prepared before the first executed refers to versions
    the first one consumed, and is refused as stale.

Effects as the port reports them: ``object_changes`` leaves out the gas coin (the localnet charges no gas and has
none), ``balance_changes`` holds USDC only (by address), ``error`` is the failure in the localnet's JSON shape
(:func:`atoma_ops.chain.errors.abort_from_json` rebuilds it). Event ``parsed_json`` uses the port's JSON-RPC
shapes: protobuf numbers (floats) are turned back into integers, and ``vector<u8>`` fields that a node renders as
base64 strings become arrays of numbers.

This module imports pysui and grpclib only when a :class:`SuiChain` is connected or used.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import datetime as _dt
import math
from typing import Any, Iterable

import base58

from ...protocol import abi
from ...wallet import Wallet, normalize_address
from .. import codec
from ..errors import (
    ChainError,
    InvalidArgument,
    MoveAbort,
    NotFound,
    TransactionRejected,
    abort_from_json,
)
from ..port import BADGE_HINTS, Chain, select_badge
from ..types import (
    Badge,
    ChainEvent,
    Coin,
    DbConfig,
    EventId,
    EventPage,
    Node,
    ObjectChange,
    PreparedTransaction,
    Stack,
    Subscription,
    Task,
    Ticket,
    TxResult,
)
from . import table_reads, tables
from .networks import SuiNetwork
from ...protocol.events import small_id
from ..digests import transaction_digest
from .movetypes import canonical_type
from .txbuild import GasConfig, OwnedRef, SharedRef, move_call_transaction

__all__ = ["SuiChain"]

SUI_COIN_TYPE = "0x2::coin::Coin<0x2::sui::SUI>"
#: Sui's limit on gas payment coins (``max_gas_payment_objects``), less one to be safe.
MAX_GAS_COINS = 255
#: The framework packages: an abort located in one of them is a framework abort, whatever the module's name.
_FRAMEWORK_PACKAGES = frozenset(normalize_address(p) for p in ("0x1", "0x2", "0x3"))
#: Event fields of type ``vector<u8>`` (atoma-protocol.md §7): arrays of numbers in the port's JSON.
_BYTE_FIELDS = frozenset(
    {"committed_stack_proof", "stack_merkle_leaf", "attestation_commitment", "original_commitment",
     "new_public_key", "evidence_bytes"}
)
_OBJECT_REF_FIELDS = ["object_id", "version", "digest", "owner", "object_type"]
_OWNED_FIELDS = ["object_id", "version", "digest", "object_type", "balance", "json", "contents"]
_TX_FIELDS = ["digest", "transaction", "effects", "events", "checkpoint", "timestamp", "balance_changes"]
_EVENT_FIELDS = ["package_id", "module", "sender", "event_type", "json", "checkpoint", "transaction_digest",
                 "event_index"]
_PAGE_SIZE = 500
_MAX_EVENT_LIMIT = 1000  # Sui's ListEvents limit
_CURSOR_MEMORY = 100_000
_TX_MEMORY = 4096
_FETCH_CONCURRENCY = 16
_EPOCH0 = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _pysui():
    """pysui's request classes and protobuf messages, and grpclib's status and error (imported on first use)."""
    import grpclib.const
    import grpclib.exceptions
    import pysui.sui.sui_grpc.pgrpc_requests as rn
    import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui

    return rn, sui, grpclib.const.Status, grpclib.exceptions.GRPCError


def _plain(value: Any) -> Any:
    """A protobuf ``Value`` as plain JSON: integral floats back to ints (u8/u16 fields, byte arrays)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def event_json(value: Any) -> Any:
    """An event's ``json`` from a node in the port's shape (see the module docstring)."""
    data = _plain(value)
    if isinstance(data, dict):
        for key in _BYTE_FIELDS & data.keys():
            if isinstance(data[key], str):
                try:
                    data[key] = list(base64.b64decode(data[key], validate=True))
                except (binascii.Error, ValueError):
                    pass  # not base64: leave the node's value as it is
    return data


def _millis(ts: Any) -> int:
    if ts is None:
        return 0
    if isinstance(ts, _dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=_dt.timezone.utc)
        return (ts - _EPOCH0) // _dt.timedelta(milliseconds=1)
    return int(ts)


def _event_name(type_: str) -> str:
    return type_.split("<", 1)[0].rsplit("::", 1)[-1]


def _is_digest(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return len(base58.b58decode(text)) == 32
    except ValueError:
        return False


class _Lru(collections.OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class SuiChain(Chain):
    """Chain port adapter for a Sui full node (gRPC), signing with a :class:`Wallet`. See the module docstring.

    Create it with :meth:`connect` inside the event loop that will use it; :meth:`close` closes the channel.
    """

    #: the intent journal signs and submits one transaction at a time on Sui (each pins the gas coin's version)
    sequential_writes = True

    def __init__(self, network: SuiNetwork, wallet: Wallet, client: Any, *, timeout_s: float | None = 60.0):
        self.network = network
        self.wallet = wallet
        self.client = client
        self.timeout_s = timeout_s
        self._tables: tables.AtomaTables | None = None
        self._db_ref: SharedRef | None = None
        self._random_ref: SharedRef | None = None
        self._event_cursors: _Lru = _Lru(_CURSOR_MEMORY)  # (tx digest, event seq) -> the node's cursor bytes
        self._transactions: _Lru = _Lru(_TX_MEMORY)  # digest -> TxResult (checkpointed transactions only)
        self._usdc_canonical = canonical_type(network.usdc_coin_type)

    @classmethod
    async def connect(
        cls, network: SuiNetwork, wallet: Wallet, *, active: str | None = None, timeout_s: float | None = 60.0
    ) -> "SuiChain":
        """A SuiChain on ``network`` acting through ``wallet`` (``active``: the default sender, an alias or address).

        Nothing is fetched yet; the first read checks the ids. ``timeout_s`` bounds every request.
        """
        from .client import pysui_client_for

        network = network.checked()
        client = pysui_client_for(network.endpoint, wallet, active=active)
        return cls(network, wallet, client, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.client.close()

    # ------------------------------------------------------------------------------------------------ gRPC plumbing
    async def _call(self, request: Any, what: str, *, refused: type[ChainError] = ChainError) -> Any:
        """Send one pysui request; its ``result_data`` (None for NOT_FOUND when the request asks for that).

        A gRPC INVALID_ARGUMENT raises ``refused``, NOT_FOUND :class:`NotFound`; any other status is re-raised as
        ``GRPCError`` (unavailable, deadline exceeded … : the outcome is unknown), a timeout or a dropped connection
        as what grpclib raised.
        """
        kwargs = {} if self.timeout_s is None else {"timeout": self.timeout_s}
        result = await self.client.execute_grpc_request(request=request, **kwargs)
        if result.is_ok():
            return result.result_data
        raise self._failure(result.result_string, what, refused)

    @staticmethod
    def _failure(detail: Any, what: str, refused: type[ChainError]) -> BaseException:
        _, _, Status, GRPCError = _pysui()
        args = detail if isinstance(detail, tuple) else (detail,)
        status = args[0] if args and isinstance(args[0], Status) else None
        message = args[1] if status is not None and len(args) > 1 else None
        if status is None:
            return ChainError(f"{what} failed: {detail}")
        if status == Status.INVALID_ARGUMENT:
            return refused(f"{what} refused: {message}")
        if status == Status.NOT_FOUND:
            return NotFound(f"{what}: {message}")
        return GRPCError(status, message, args[2] if len(args) > 2 else None)

    async def _stream(self, request: Any, what: str) -> list[Any]:
        """Every frame of a server-streaming request."""
        _, _, Status, GRPCError = _pysui()
        stream = await self._call(request, what)
        try:
            return [frame async for frame in stream]
        except GRPCError as exc:
            if exc.status == Status.INVALID_ARGUMENT:
                raise ChainError(f"{what} refused: {exc.message}") from None
            raise

    async def _get_object(self, object_id: str, fields: list[str]) -> Any | None:
        rn, _, _, _ = _pysui()
        request = rn.GetObject(object_id=object_id, field_mask=fields)
        request.not_found_as_none = True
        response = await self._call(request, f"GetObject {object_id}")
        return None if response is None else response.object

    async def _list_owned(self, owner: str, object_type: str, fields: list[str]) -> list[Any]:
        """Every object of ``object_type`` owned by ``owner`` (ListOwnedObjects, page by page)."""
        rn, _, _, _ = _pysui()
        out: list[Any] = []
        token: bytes | None = None
        while True:
            request = rn.GetObjectsOwnedByAddress(
                owner=owner, object_type=object_type, field_mask=fields, page_size=_PAGE_SIZE, page_token=token
            )
            page = await self._call(request, f"ListOwnedObjects {owner} {object_type}")
            out.extend(page.objects)
            token = page.next_page_token
            if not token:
                return out

    async def _epoch(self, fields: list[str]) -> Any:
        rn, _, _, _ = _pysui()
        return (await self._call(rn.GetEpoch(field_mask=fields), "GetEpoch")).epoch

    # ------------------------------------------------------------------------------------------------ reads
    async def _atoma_tables(self) -> tables.AtomaTables:
        if self._tables is None:
            await self.db_config()
        assert self._tables is not None
        return self._tables

    async def current_epoch(self) -> int:
        return int((await self._epoch(["epoch"])).epoch or 0)

    async def db_config(self) -> DbConfig:
        config, found = await table_reads.read_db(self.client, self.network.db_id)
        if self._tables is None:
            self._tables = found
        return config

    @staticmethod
    def _u64_key(value: Any) -> int | None:
        """A small id as the localnet takes it: anything that is not a u64 finds nothing."""
        try:
            n = int(value)
        except (TypeError, ValueError):
            return None
        return n if 0 <= n < 2**64 else None

    async def get_task(self, task_small_id: int) -> Task | None:
        key = self._u64_key(task_small_id)
        return None if key is None else await table_reads.read_task(self.client, (await self._atoma_tables()).tasks, key)

    async def get_node(self, node_small_id: int) -> Node | None:
        key = self._u64_key(node_small_id)
        return None if key is None else await table_reads.read_node(self.client, (await self._atoma_tables()).nodes, key)

    async def get_stack(self, stack_small_id: int) -> Stack | None:
        key = self._u64_key(stack_small_id)
        if key is None:
            return None
        return await table_reads.read_stack(self.client, (await self._atoma_tables()).stacks, key)

    async def get_ticket(self, stack_small_id: int) -> Ticket | None:
        key = self._u64_key(stack_small_id)
        if key is None:
            return None
        return await table_reads.read_ticket(self.client, (await self._atoma_tables()).stack_settlement_tickets, key)

    async def subscriptions(self, task_small_id: int) -> list[Subscription]:
        key = self._u64_key(task_small_id)
        if key is None:
            return []
        return await table_reads.read_subscriptions(self.client, (await self._atoma_tables()).tasks, key)

    @staticmethod
    def _ref(obj: Any) -> OwnedRef:
        return OwnedRef(normalize_address(obj.object_id), int(obj.version), obj.digest)

    @staticmethod
    def _coin_balance(obj: Any) -> int:
        if obj.balance is not None:
            return int(obj.balance)
        if obj.json is not None:
            data = obj.json.to_dict()
            if isinstance(data, dict) and "balance" in data:
                return int(data["balance"])
        if obj.contents is not None and obj.contents.value and len(obj.contents.value) >= 40:
            return int.from_bytes(bytes(obj.contents.value)[32:40], "little")  # Coin { id: UID, balance: u64 }
        raise ChainError(f"coin {obj.object_id} came without its balance")

    async def _usdc(self, address: str) -> list[tuple[Coin, OwnedRef]]:
        objects = await self._list_owned(address, f"0x2::coin::Coin<{self.network.usdc_coin_type}>", _OWNED_FIELDS)
        coins = [(Coin(normalize_address(o.object_id), self._coin_balance(o), int(o.version)), self._ref(o))
                 for o in objects]
        return sorted(coins, key=lambda c: (-c[0].balance, c[0].object_id))

    async def usdc_coins(self, address: str) -> list[Coin]:
        return [coin for coin, _ in await self._usdc(normalize_address(address))]

    async def gas_balance(self, address: str) -> int:
        objects = await self._list_owned(normalize_address(address), SUI_COIN_TYPE, _OWNED_FIELDS)
        return sum(self._coin_balance(o) for o in objects)

    @staticmethod
    def _small_id(obj: Any) -> int | None:
        if obj.json is not None:
            data = obj.json.to_dict()
            small = data.get("small_id") if isinstance(data, dict) else None
            if isinstance(small, dict) and "inner" in small:
                return small_id(small)
        if obj.contents is not None and obj.contents.value and len(obj.contents.value) >= 40:
            return int.from_bytes(bytes(obj.contents.value)[32:40], "little")  # { id: UID, small_id: { inner } }
        return None

    async def _badges(self, address: str, kinds: Iterable[str]) -> list[tuple[Badge, OwnedRef]]:
        package = (await self._atoma_tables()).type_package_id
        kinds = list(kinds)
        found = await asyncio.gather(
            *(self._list_owned(address, f"{package}::db::{kind}", _OWNED_FIELDS) for kind in kinds)
        )
        out = []
        for kind, objects in zip(kinds, found):
            for o in objects:
                small = None if kind == "AtomaManagerBadge" else self._small_id(o)
                out.append((Badge(normalize_address(o.object_id), kind, small, int(o.version)), self._ref(o)))
        return sorted(out, key=lambda b: (abi.BADGE_KINDS.index(b[0].kind), b[0].object_id))

    async def badges(self, address: str) -> list[Badge]:
        return [badge for badge, _ in await self._badges(normalize_address(address), abi.BADGE_KINDS)]

    # -- transactions
    def _error_detail(self, error: Any) -> dict:
        """A failed execution's error in the localnet's JSON shape (see ``abort_from_json``)."""
        _, sui, _, _ = _pysui()
        kind = error.kind if error is not None else None
        description = (error.description if error is not None else None) or ""
        if kind == sui.ExecutionErrorExecutionErrorKind.MOVE_ABORT and error.abort is not None:
            location = error.abort.location
            module = (location.module if location is not None else None) or ""
            package = location.package if location is not None else None
            package = normalize_address(package) if package else None
            is_db = module == "db" and package not in _FRAMEWORK_PACKAGES
            function = location.function_name if (location is not None and is_db) else None
            abort = MoveAbort("db" if is_db else module, int(error.abort.abort_code or 0), None, function)
            detail = abort.to_json()
            if function:
                detail["function"] = function
            return detail
        primitive = kind == sui.ExecutionErrorExecutionErrorKind.MOVE_PRIMITIVE_RUNTIME_ERROR
        if primitive or "ARITHMETIC_ERROR" in description:
            message = description
            if message.startswith("ARITHMETIC_ERROR: "):
                message = message[len("ARITHMETIC_ERROR: "):]
            return {"kind": "ArithmeticError", "message": message or "ArithmeticError"}
        name = kind.name if kind is not None else "EXECUTION_ERROR_KIND_UNKNOWN"
        return {"kind": "ExecutionError", "message": description or name}

    def _raise_failure(self, detail: dict, digest: str | None) -> None:
        error = abort_from_json(detail)
        error.digest = digest
        raise error

    def _object_change(self, change: Any, lamport: int | None) -> ObjectChange | None:
        _, sui, _, _ = _pysui()
        out_state = change.output_state
        if out_state == sui.ChangedObjectOutputObjectState.ACCUMULATOR_WRITE:
            return None  # address balances, not objects
        op = change.id_operation
        if op == sui.ChangedObjectIdOperation.CREATED:
            kind = "created"
        elif op == sui.ChangedObjectIdOperation.DELETED:
            kind = "deleted"
        else:
            kind = "mutated"
        owner_msg = change.output_owner if kind != "deleted" else change.input_owner
        if owner_msg is None or owner_msg.kind is None:
            owner = "wrapped" if kind != "deleted" else ""
        elif owner_msg.kind == sui.OwnerOwnerKind.SHARED:
            owner = "shared"
        elif owner_msg.kind == sui.OwnerOwnerKind.IMMUTABLE:
            owner = "immutable"
        else:
            owner = normalize_address(owner_msg.address) if owner_msg.address else ""
        version = change.output_version if change.output_version is not None else lamport
        return ObjectChange(
            object_id=normalize_address(change.object_id), type=change.object_type or "", owner=owner,
            version=int(version or 0), change=kind,
        )

    def _tx_result(self, executed: Any, sender: str | None = None) -> TxResult:
        """The port's TxResult of an ``ExecutedTransaction``."""
        effects = executed.effects
        if effects is None or effects.status is None:
            raise ChainError(f"transaction {executed.digest} came without effects")
        digest = executed.digest or effects.transaction_digest
        tx_sender = executed.transaction.sender if executed.transaction is not None else None
        sender = normalize_address(tx_sender or sender or "0x0")
        epoch = int(effects.epoch or 0)
        timestamp_ms = _millis(executed.timestamp)
        events = []
        if executed.events is not None:
            for seq, e in enumerate(executed.events.events):
                events.append(self._chain_event(e, digest, seq, timestamp_ms, epoch))
        gas_id = effects.gas_object.object_id if effects.gas_object is not None else None
        changes = [
            c for c in (self._object_change(ch, effects.lamport_version) for ch in effects.changed_objects
                        if ch.object_id != gas_id)
            if c is not None
        ]
        balances: dict[str, int] = {}
        for bc in executed.balance_changes or []:
            if canonical_type(bc.coin_type or "") == self._usdc_canonical and bc.address:
                address = normalize_address(bc.address)
                balances[address] = balances.get(address, 0) + int(bc.amount or 0)
        ok = bool(effects.status.success)
        return TxResult(
            digest=digest,
            status="success" if ok else "failure",
            sender=sender,
            epoch=epoch,
            timestamp_ms=timestamp_ms,
            events=events,
            object_changes=changes,
            balance_changes={a: v for a, v in balances.items() if v != 0},
            error=None if ok else self._error_detail(effects.status.error),
        )

    def _chain_event(self, e: Any, digest: str, seq: int, timestamp_ms: int, epoch: int) -> ChainEvent:
        type_ = e.event_type or ""
        return ChainEvent(
            id=EventId(digest, seq),
            type=type_,
            name=_event_name(type_),
            parsed_json=event_json(e.json.to_dict()) if e.json is not None else {},
            sender=normalize_address(e.sender) if e.sender else "",
            package_id=normalize_address(e.package_id) if e.package_id else "",
            timestamp_ms=timestamp_ms,
            epoch=epoch,
        )

    async def _get_executed(self, digest: str) -> Any | None:
        rn, _, _, _ = _pysui()
        request = rn.GetTransaction(digest=digest, field_mask=_TX_FIELDS)
        request.not_found_as_none = True
        response = await self._call(request, f"GetTransaction {digest}")
        return None if response is None else response.transaction

    def _remember(self, executed: Any, tx: TxResult) -> None:
        if executed.timestamp is not None:  # in a checkpoint: final
            self._transactions.put(tx.digest, tx)

    async def get_transaction(self, digest: str) -> TxResult | None:
        if not _is_digest(digest):
            return None
        known = self._transactions.get(digest)
        if known is not None:
            return known
        executed = await self._get_executed(digest)
        if executed is None:
            return None
        tx = self._tx_result(executed)
        self._remember(executed, tx)
        return tx

    # -- events
    async def _event_filter(self) -> Any:
        _, sui, _, _ = _pysui()
        package = (await self._atoma_tables()).type_package_id
        literal = sui.EventLiteral(event_type=sui.EventTypeFilter(event_type=f"{package}::db"))
        return sui.EventFilter(terms=[sui.EventTerm(literals=[literal])])

    async def _list_events(self, *, after: bytes | None = None, limit: int, start: int | None = None,
                           end: int | None = None) -> list[Any]:
        rn, sui, _, _ = _pysui()
        request = rn.ListEvents(
            field_mask=_EVENT_FIELDS, start_checkpoint=start, end_checkpoint=end,
            event_filter=await self._event_filter(), options=sui.QueryOptions(limit=limit, after=after),
        )
        frames = await self._stream(request, "ListEvents")
        for frame in frames:
            event = frame.event
            if event is not None and frame.watermark is not None and frame.watermark.cursor:
                key = (event.transaction_digest, int(event.event_index or 0))
                self._event_cursors.put(key, bytes(frame.watermark.cursor))
        return frames

    async def _locate(self, cursor: EventId) -> bytes:
        """The node's cursor at the event ``cursor`` names: its transaction's checkpoint, listed until found."""
        key = (cursor.tx_digest, int(cursor.event_seq))
        executed = await self._get_executed(cursor.tx_digest) if _is_digest(cursor.tx_digest) else None
        if executed is None or executed.checkpoint is None:
            raise NotFound(f"unknown event cursor {cursor}")
        checkpoint = int(executed.checkpoint)
        after: bytes | None = None
        while key not in self._event_cursors:
            frames = await self._list_events(after=after, limit=_MAX_EVENT_LIMIT, start=checkpoint, end=checkpoint + 1)
            items = [f for f in frames if f.event is not None]
            if not items:
                raise NotFound(f"unknown event cursor {cursor}")
            after = bytes(items[-1].watermark.cursor)
        return self._event_cursors[key]

    async def events(self, cursor: EventId | None = None, limit: int = 50) -> EventPage:
        """Events of ``atoma::db`` after ``cursor`` in ledger order, ``limit`` at a time (see the module docstring)."""
        if limit < 1:
            raise InvalidArgument("limit must be >= 1")
        after = None
        if cursor is not None:
            after = self._event_cursors.get((cursor.tx_digest, int(cursor.event_seq))) or await self._locate(cursor)
        ask = min(limit + 1, _MAX_EVENT_LIMIT)
        frames = await self._list_events(after=after, limit=ask)
        items = [f.event for f in frames if f.event is not None]
        page = items[: min(limit, _MAX_EVENT_LIMIT)]
        if len(items) > len(page):
            has_next = True
        else:
            _, sui, _, _ = _pysui()
            end = frames[-1].end if frames else None
            has_next = len(items) == ask and end is not None and end.reason == sui.QueryEndReason.ITEM_LIMIT
        meta = await self._transaction_meta({e.transaction_digest for e in page})
        events = []
        for e in page:
            timestamp_ms, epoch = meta[e.transaction_digest]
            events.append(self._chain_event(e, e.transaction_digest, int(e.event_index or 0), timestamp_ms, epoch))
        next_cursor = events[-1].id if events else cursor
        return EventPage(events, next_cursor, has_next)

    async def _transaction_meta(self, digests: set[str]) -> dict[str, tuple[int, int]]:
        """(timestamp ms, epoch) of each transaction, from GetTransaction (cached)."""
        missing = sorted(d for d in digests if d not in self._transactions)
        semaphore = asyncio.Semaphore(_FETCH_CONCURRENCY)

        async def fetch(digest: str) -> None:
            async with semaphore:
                executed = await self._get_executed(digest)
            if executed is None:
                raise ChainError(f"event of transaction {digest}, which the node does not know")
            self._transactions.put(digest, self._tx_result(executed))

        await asyncio.gather(*(fetch(d) for d in missing))
        return {d: (self._transactions[d].timestamp_ms, self._transactions[d].epoch) for d in digests}

    # ------------------------------------------------------------------------------------------------ writes
    async def _shared(self, object_id: str, mutable: bool) -> SharedRef:
        _, sui, _, _ = _pysui()
        obj = await self._get_object(object_id, _OBJECT_REF_FIELDS)
        if obj is None:
            raise NotFound(f"no object {object_id} on {self.network.name}")
        if obj.owner is None or obj.owner.kind != sui.OwnerOwnerKind.SHARED or obj.owner.version is None:
            raise ChainError(f"object {object_id} is not a shared object")
        return SharedRef(object_id, int(obj.owner.version), mutable)

    async def _object_ref(self, value: Any) -> OwnedRef:
        try:
            object_id = normalize_address(str(value))
        except ValueError:
            raise InvalidArgument(f"{value!r} is not an object id") from None
        obj = await self._get_object(object_id, _OBJECT_REF_FIELDS)
        if obj is None:
            raise TransactionRejected(f"object {object_id} does not exist")
        return self._ref(obj)

    async def _find_badge(self, sender: str, kind: str, explicit: Any, hint: Any) -> OwnedRef:
        if explicit is not None:
            return await self._object_ref(explicit)
        label = self.wallet.alias_of(sender) or sender
        return select_badge(await self._badges(sender, [kind]), kind, hint, label)

    async def _resolve(self, sender: str, function: str, args: dict[str, Any]) -> tuple[dict, dict, list, bool]:
        """The pure arguments, object references, coins to merge and whether Random is taken, as the localnet
        adapter resolves them (same checks, same messages)."""
        params = abi.ENTRY_FUNCTIONS.get(function)
        if params is None:
            raise InvalidArgument(f"db::{function} is not an entry function")
        args = dict(args)
        names = {p.name for p in params}
        pure: dict[str, Any] = {}
        objects: dict[str, OwnedRef] = {}
        merge: list[OwnedRef] = []
        takes_random = False
        for param in params:
            value = args.pop(param.name, None)
            if param.type == abi.RANDOM:
                takes_random = True
            elif param.type == abi.USDC_COIN_MUT:
                if value is None:
                    coins = await self._usdc(sender)
                    if not coins:
                        raise InvalidArgument(f"{self.wallet.alias_of(sender) or sender} has no USDC coins")
                    # As the proxy does: merge every USDC coin into one before paying.
                    objects[param.name] = coins[0][1]
                    merge = [ref for _, ref in coins[1:]]
                else:
                    objects[param.name] = await self._object_ref(value)
            elif param.is_object:
                kind = abi.badge_kind(param.type)
                hint_name = BADGE_HINTS.get(kind)
                hint = args.pop(hint_name, None) if hint_name and hint_name not in names else None
                objects[param.name] = await self._find_badge(sender, kind, value, hint)
            else:
                if value is None and not param.type.startswith("Option"):
                    raise InvalidArgument(f"missing argument {param.name} ({param.type})")
                pure[param.name] = codec.check_value(param.name, param.type, value)
        leftover = {k: v for k, v in args.items() if v is not None}
        if leftover:
            raise InvalidArgument(f"db::{function} has no parameter {', '.join(sorted(leftover))}")
        return pure, objects, merge, takes_random

    async def _gas(self, sender: str) -> tuple[int, list[OwnedRef], int]:
        """(reference gas price, the SUI coins that pay, their total balance), read now."""
        epoch, objects = await asyncio.gather(
            self._epoch(["reference_gas_price"]), self._list_owned(sender, SUI_COIN_TYPE, _OWNED_FIELDS)
        )
        coins = sorted(((self._coin_balance(o), self._ref(o)) for o in objects), key=lambda c: (-c[0], c[1].object_id))
        coins = [c for c in coins if c[0] > 0]
        if not coins:
            raise InvalidArgument(f"{self.wallet.alias_of(sender) or sender} has no SUI to pay gas")
        payment, total = [], 0
        for balance, ref in coins[:MAX_GAS_COINS]:
            payment.append(ref)
            total += balance
            if total >= self.network.gas_budget_cap:
                break
        return int(epoch.reference_gas_price or 0), payment, total

    async def _context(self, takes_random: bool) -> tuple[SharedRef, SharedRef | None]:
        if self._db_ref is None:
            self._db_ref = await self._shared(normalize_address(self.network.db_id), True)
        if takes_random and self._random_ref is None:
            self._random_ref = await self._shared(abi.RANDOM_OBJECT_ID, False)
        return self._db_ref, self._random_ref if takes_random else None

    async def build_transaction(
        self, sender: str, function: str, args: dict[str, Any], *, gas_budget: int | None = None
    ) -> PreparedTransaction:
        """Transaction bytes with the given gas budget (default: the network's cap) and no simulation."""
        sender = self.wallet.resolve(sender)
        pure, objects, merge, takes_random = await self._resolve(sender, function, args)
        db, random = await self._context(takes_random)
        price, payment, total = await self._gas(sender)
        budget = self.network.gas_budget_cap if gas_budget is None else gas_budget
        tx_bytes = self._build(sender, function, pure, objects, merge, db, random, price, payment, budget)
        return PreparedTransaction(tx_bytes=tx_bytes, digest=transaction_digest(tx_bytes), sender=sender,
                                   function=function)

    def _build(self, sender, function, pure, objects, merge, db, random, price, payment, budget) -> bytes:
        return move_call_transaction(
            sender, self.network.package_id, function, pure, db=db, random=random, objects=objects,
            merge_coins=merge, gas=GasConfig(sender, price, budget, tuple(payment)),
        )

    async def prepare(self, sender: str, function: str, args: dict[str, Any]) -> PreparedTransaction:
        sender = self.wallet.resolve(sender)
        pure, objects, merge, takes_random = await self._resolve(sender, function, args)
        db, random = await self._context(takes_random)
        price, payment, total = await self._gas(sender)
        cap = self.network.gas_budget_cap
        trial = self._build(sender, function, pure, objects, merge, db, random, price, payment, min(cap, total))
        simulated = await self._simulate(trial)
        effects = simulated.effects
        if not effects.status.success:
            self._raise_failure(self._error_detail(effects.status.error), None)
        used = effects.gas_used
        cost = int(used.computation_cost or 0) + int(used.storage_cost or 0)
        budget = min(cap, math.ceil(cost * 3 / 2))
        if budget > total:
            raise InvalidArgument(
                f"{self.wallet.alias_of(sender) or sender} has {total} MIST of SUI; db::{function} needs a gas "
                f"budget of {budget}"
            )
        tx_bytes = trial if budget == min(cap, total) else self._build(
            sender, function, pure, objects, merge, db, random, price, payment, budget
        )
        return PreparedTransaction(tx_bytes=tx_bytes, digest=transaction_digest(tx_bytes), sender=sender,
                                   function=function)

    async def _simulate(self, tx_bytes: bytes) -> Any:
        rn, _, _, _ = _pysui()
        request = rn.SimulateTransaction(transaction=bytes(tx_bytes), checks_enabled=True, gas_selection=False)
        response = await self._call(request, "SimulateTransaction", refused=TransactionRejected)
        if response is None or response.transaction is None or response.transaction.effects is None:
            raise ChainError("SimulateTransaction answered without effects")
        return response.transaction

    def sign(self, prepared: PreparedTransaction) -> str:
        return self.wallet.sign(prepared.sender, prepared.tx_bytes)

    async def execute(self, prepared: PreparedTransaction, signature: str) -> TxResult:
        rn, _, _, _ = _pysui()
        request = rn.ExecuteTransaction(tx_bytestr=bytes(prepared.tx_bytes), sig_array=[signature],
                                        field_mask=_TX_FIELDS)
        executed = await self._call(request, f"ExecuteTransaction {prepared.digest}", refused=TransactionRejected)
        if executed is None:
            raise ChainError(f"ExecuteTransaction {prepared.digest} answered without a transaction")
        tx = self._tx_result(executed, prepared.sender)
        self._remember(executed, tx)
        if not tx.ok:
            self._raise_failure(tx.error or {}, tx.digest)
        return tx
