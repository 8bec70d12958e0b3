"""A loopback Sui full node: the read side of Sui's gRPC API (``sui.rpc.v2``) served from a localnet file.

This is a TEST DOUBLE. No real Sui node (validator or full node) can run where this project is built and tested,
so the Sui adapter is exercised against this server instead: pysui's own gRPC client talks to it exactly as it
talks to a real full node, over HTTP/2 on 127.0.0.1 without TLS. The state behind it is a :class:`Localnet` chain
file (``<home>/chain.sqlite``), read live on every request, so writes made by other processes show up at once.

Served here (the reads; the write side, ExecuteTransaction, SimulateTransaction, GetTransaction and ListEvents,
is :mod:`.loopback_exec`, served by the same node):

- ``LedgerService``: ``GetServiceInfo``, ``GetEpoch``, ``GetObject``, ``BatchGetObjects``
- ``StateService``: ``ListOwnedObjects`` (object-type filter, paging), ``GetBalance``, ``ListBalances``,
  ``ListDynamicFields`` (AtomaDb's tables, a task's tables, a NodeBadge's subscriptions; paged)
- ``MovePackageService``: ``GetFunction`` for every ``atoma::db`` entry function (from ``atoma_ops.protocol.abi``)

How localnet objects become Sui ``Object`` messages:

- ``digest``: base58 of blake2b-256 over ``"ObjectDigest::" ‖ id ‖ u64-LE version``; stable per (id, version),
  so it changes exactly when the version does (a real digest hashes the contents, which a version bump also
  changes).
- ``owner``: an address owner is ``ADDRESS``; the localnet's ``shared`` owner is ``SHARED`` with the
  ``initial_shared_version`` in ``Owner.version``; the two packages are ``IMMUTABLE`` objects of type ``package``.
- ``object_type``: the localnet's type string (``<package>::db::NodeBadge``,
  ``0x2::coin::Coin<<usdc package>::usdc::USDC>``); type filters compare with every address padded to 32 bytes,
  so ``0x2`` and ``0x000…002`` both match.
- Coins carry ``balance``; coins and badges carry ``contents`` (BCS of the Move struct: ``id`` then the ``u64``
  balance or small id); every object but the packages carries ``json`` (``{"id": …}`` plus the localnet's
  fields, as the localnet stores them). ``previous_transaction`` and ``storage_rebate`` are not served.
- AtomaDb's ``json`` and ``contents`` are Sui's rendering of the Move struct, each table as ``{"id", "size"}``;
  every table entry is a ``0x2::dynamic_field::Field<K, V>`` object at its derived id, owned (``OBJECT``) by the
  table's UID, and Tasks and tickets are objects owned by their ObjectTable fields (:mod:`.loopback_tables`).
- Read masks are honoured on top-level fields (``*`` for all), with Sui's documented defaults when absent.
- The Random object ``0x8`` exists as a shared object, as on every Sui network, so pysui can resolve it.
- Every address holds one virtual SUI gas coin (the localnet has no SUI and charges no gas): id
  :func:`gas_coin_id` (blake2b-256 of ``"loopback-gas" ‖ address``), type ``0x2::coin::Coin<0x2::sui::SUI>``,
  balance 10**12, version 1 + the transactions the address has sent (:func:`gas_coin_ref`). It is listed by
  ListOwnedObjects, counted by GetBalance/ListBalances for ``0x2::sui::SUI`` and found by GetObject once the node
  knows the address (a sender or object owner of the localnet, or an address asked about).

Usage::

    async with LoopbackSuiNode(home.chain_file) as node:
        client = pysui_client_for(node.url, wallet)   # atoma_ops.chain.sui.client

    with BackgroundLoopbackNode(home.chain_file) as node:   # from synchronous code
        ...
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import hashlib
import logging
import os
import re
import socket
import threading
from typing import Any, Awaitable, Callable

import base58
import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError

import pysui.sui.sui_grpc.suimsgs.google.protobuf as pb
import pysui.sui.sui_grpc.suimsgs.google.rpc as rpc_status
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui

from ...protocol import abi
from ...wallet import normalize_address
from .._json import loads
from ..errors import ChainError, NotFound
from ..localnet.engine import SHARED, Localnet
from .client import _is_loopback
from .loopback_tables import LoopbackTables, page_request

log = logging.getLogger("atoma_ops.chain.sui.loopback")

__all__ = [
    "BackgroundLoopbackNode",
    "GAS_COIN_BALANCE",
    "GAS_COIN_TYPE",
    "LoopbackSuiNode",
    "REFERENCE_GAS_PRICE",
    "canonical_type",
    "function_descriptor",
    "gas_coin_id",
    "gas_coin_ref",
    "object_digest",
]

#: Reference gas price (MIST per gas unit) of every epoch.
REFERENCE_GAS_PRICE = 1000
#: Sui's limits as a full node reports them in ``Epoch.protocol_config.attributes`` (long-standing Sui mainnet
#: values). pysui reads the first ten keys at connect time into ``TransactionConstraints``;
#: ``max_move_object_size`` is the limit the localnet contract enforces. The double has no behaviour gated on
#: the protocol version, so it reports version 1.
PROTOCOL_VERSION = 1
PROTOCOL_ATTRIBUTES = {
    "max_arguments": 512,
    "max_input_objects": 2048,
    "max_num_transferred_move_object_ids": 2048,
    "max_programmable_tx_commands": 1024,
    "max_pure_argument_size": 16 * 1024,
    "max_tx_size_bytes": 128 * 1024,
    "max_type_argument_depth": 16,
    "max_type_arguments": 16,
    "max_tx_gas": 50_000_000_000,
    "max_publish_or_upgrade_per_ptb": 5,
    "max_move_object_size": 250 * 1024,
}
#: The localnet publishes AtomaDb (its only shared object) at version 1.
ATOMA_DB_INITIAL_SHARED_VERSION = 1
RANDOM_INITIAL_SHARED_VERSION = 1
RANDOM_TYPE = "0x2::random::Random"
TX_CONTEXT_TYPE = "0x2::tx_context::TxContext"
COIN_TYPE = "0x2::coin::Coin"
OPTION_TYPE = "0x1::option::Option"
ASCII_STRING_TYPE = "0x1::ascii::String"

_SCAN_CHUNK = 256
_PAGE_TOKEN_TAG = b"\x01"

_OBJECT_FIELDS_DEFAULT = frozenset({"object_id", "version", "digest"})
_OWNED_FIELDS_DEFAULT = frozenset({"object_id", "version", "object_type"})
_EPOCH_FIELDS_DEFAULT = frozenset({"epoch"})
_ADDRESS_IN_TYPE = re.compile(r"0[xX][0-9a-fA-F]+(?=::)")
_STRUCT_TAG = re.compile(r"^0x[0-9a-f]{64}::[A-Za-z_][A-Za-z0-9_]*::[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------------- helpers
def canonical_type(type_str: str) -> str:
    """A Move type with every address padded to 32 bytes (``0x2::coin::Coin<0xa::usdc::USDC>`` → long form)."""
    return _ADDRESS_IN_TYPE.sub(lambda m: normalize_address(m.group(0)), type_str.strip())


def object_digest(object_id: str, version: int) -> str:
    """The double's object digest: base58 of blake2b-256 over ``"ObjectDigest::" ‖ id ‖ u64-LE version``."""
    raw = bytes.fromhex(normalize_address(object_id)[2:])
    material = b"ObjectDigest::" + raw + int(version).to_bytes(8, "little")
    return base58.b58encode(hashlib.blake2b(material, digest_size=32).digest()).decode()


#: The virtual SUI gas coin every address holds (the localnet has no SUI and charges no gas): type, balance (MIST).
GAS_COIN_TYPE = "0x2::coin::Coin<0x2::sui::SUI>"
SUI_TYPE = "0x2::sui::SUI"
GAS_COIN_BALANCE = 10**12


def gas_coin_id(address: str) -> str:
    """The object id of ``address``'s virtual gas coin: blake2b-256 over ``b"loopback-gas" ‖ address bytes``."""
    raw = bytes.fromhex(normalize_address(address)[2:])
    return "0x" + hashlib.blake2b(b"loopback-gas" + raw, digest_size=32).hexdigest()


def _sent_count(conn: Any, address: str, before_seq: int | None = None) -> int:
    """Transactions ``address`` has sent on the localnet (successful or failed), optionally those before a seq."""
    if before_seq is None:
        row = conn.execute("SELECT COUNT(*) FROM transactions WHERE sender = ?", (address,)).fetchone()
    else:
        row = conn.execute(
            "SELECT COUNT(*) FROM transactions WHERE sender = ? AND seq < ?", (address, int(before_seq))
        ).fetchone()
    return int(row[0])


def gas_coin_ref(localnet: Localnet, address: str) -> tuple[str, int, str]:
    """``(object id, version, digest)`` of ``address``'s gas coin now.

    The version is 1 + the number of transactions ``address`` has sent on the localnet, successful or failed
    (the localnet records a faucet mint as sent by its recipient, so a mint bumps it too); the digest is
    :func:`object_digest` of (id, version). A refused transaction changes nothing, as on Sui.
    """
    address = normalize_address(address)
    object_id = gas_coin_id(address)
    version = 1 + _sent_count(localnet.conn, address)
    return object_id, version, object_digest(object_id, version)




def _mask(read_mask: Any, default: frozenset[str]) -> frozenset[str] | None:
    """Top-level field names of a FieldMask; None means every field (``*``)."""
    paths = list(getattr(read_mask, "paths", None) or [])
    if not paths:
        return default
    top = {p.split(".", 1)[0] for p in paths}
    return None if "*" in top else frozenset(top)


def _address(value: str | None, what: str) -> str:
    if not value:
        raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"missing {what}")
    try:
        return normalize_address(value)
    except ValueError:
        raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"invalid {what}: {value!r}") from None


def _utc(ms: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)


# --------------------------------------------------------------------------------------------------- signatures
_B = sui.OpenSignatureBody
_T = sui.OpenSignatureBodyType
_R = sui.OpenSignatureReference
_SCALARS = {abi.U8: _T.U8, abi.U16: _T.U16, abi.U64: _T.U64, abi.BOOL: _T.BOOL}


def _datatype(type_name: str, *params: sui.OpenSignatureBody) -> sui.OpenSignatureBody:
    # Generics go in type_parameter_instantiation, never in type_name (pysui splits type_name on "::").
    return _B(type=_T.DATATYPE, type_name=type_name, type_parameter_instantiation=list(params))


def _param_signature(param_type: str, package_id: str, usdc_type: str) -> sui.OpenSignature:
    """One ``abi`` parameter type as a Move ``OpenSignature`` (reference + body)."""
    if param_type in _SCALARS:
        return sui.OpenSignature(body=_B(type=_SCALARS[param_type]))
    if param_type in (abi.OPTION_U8, abi.OPTION_U16):
        return sui.OpenSignature(body=_datatype(OPTION_TYPE, _B(type=_SCALARS[param_type[7:-1]])))
    if param_type == abi.OPTION_STRING:
        # The contract's model name is std::ascii::String.
        return sui.OpenSignature(body=_datatype(OPTION_TYPE, _datatype(ASCII_STRING_TYPE)))
    if param_type in (abi.VECTOR_U8, abi.VECTOR_U64):
        inner = _T.U8 if param_type == abi.VECTOR_U8 else _T.U64
        return sui.OpenSignature(body=_B(type=_T.VECTOR, type_parameter_instantiation=[_B(type=inner)]))
    if param_type == abi.RANDOM:
        return sui.OpenSignature(reference=_R.IMMUTABLE, body=_datatype(RANDOM_TYPE))
    if param_type == abi.USDC_COIN_MUT:
        return sui.OpenSignature(reference=_R.MUTABLE, body=_datatype(COIN_TYPE, _datatype(usdc_type)))
    kind = abi.badge_kind(param_type)
    if kind is not None:
        if param_type.startswith("&mut "):
            ref: sui.OpenSignatureReference | None = _R.MUTABLE
        elif param_type.startswith("&"):
            ref = _R.IMMUTABLE
        else:
            ref = None  # by value
        return sui.OpenSignature(reference=ref, body=_datatype(f"{package_id}::db::{kind}"))
    raise ValueError(f"no Move signature for abi type {param_type!r}")


def function_descriptor(function: str, package_id: str, usdc_type: str) -> sui.FunctionDescriptor:
    """``atoma::db::<function>`` as Sui describes it: ``&mut AtomaDb``, the abi parameters, ``&mut TxContext``.

    TxContext is sent as the datatype ``0x2::tx_context::TxContext`` (pysui drops the parameter by that name).
    """
    params = abi.ENTRY_FUNCTIONS[function]
    signatures = [sui.OpenSignature(reference=_R.MUTABLE, body=_datatype(f"{package_id}::db::AtomaDb"))]
    signatures += [_param_signature(p.type, package_id, usdc_type) for p in params]
    signatures.append(sui.OpenSignature(reference=_R.MUTABLE, body=_datatype(TX_CONTEXT_TYPE)))
    return sui.FunctionDescriptor(
        name=function,
        visibility=sui.FunctionDescriptorVisibility.PUBLIC,
        is_entry=True,
        type_parameters=[],
        parameters=signatures,
        returns=[],
    )


# --------------------------------------------------------------------------------------------------- reads
class _Reads:
    """Everything the double reads from the localnet, as Sui messages. Synchronous; short SQLite reads."""

    def __init__(self, localnet: Localnet, chain_name: str):
        self.net = localnet
        self.chain_name = chain_name
        self.usdc_type = localnet.usdc_type
        self.usdc_type_canonical = canonical_type(localnet.usdc_type)
        self.coin_type_canonical = canonical_type(localnet.coin_type)
        self.gas_type_canonical = canonical_type(GAS_COIN_TYPE)
        self._gas_owners: dict[str, str] = {}  # gas coin id -> address, for every address seen so far
        self.badge_types = {canonical_type(localnet.type_of(k)) for k in abi.BADGE_KINDS}
        self.db_id = normalize_address(localnet.db_id)
        self.tables = LoopbackTables(localnet)  # AtomaDb's tables as dynamic field objects
        self.functions = {
            name: function_descriptor(name, localnet.package_id, localnet.usdc_type) for name in abi.ENTRY_FUNCTIONS
        }
        # Objects a real network has that the localnet's objects table does not hold.
        self.virtual: dict[str, dict] = {
            abi.RANDOM_OBJECT_ID: {
                "id": abi.RANDOM_OBJECT_ID, "type": RANDOM_TYPE, "owner": SHARED,
                "version": RANDOM_INITIAL_SHARED_VERSION, "data": {},
                "initial_shared_version": RANDOM_INITIAL_SHARED_VERSION,
            },
        }
        for pkg in (localnet.package_id, localnet.usdc_package_id):
            self.virtual[normalize_address(pkg)] = {
                "id": normalize_address(pkg), "type": "package", "owner": "immutable", "version": 1, "data": None,
            }

    # -- ledger
    def checkpoint_height(self) -> int:
        row = self.net.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM transactions").fetchone()
        return int(row[0])

    def last_timestamp_ms(self) -> int | None:
        row = self.net.conn.execute("SELECT effects FROM transactions ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else int(loads(row[0]).get("timestamp_ms", 0))

    def service_info(self) -> sui.GetServiceInfoResponse:
        ts = self.last_timestamp_ms()
        return sui.GetServiceInfoResponse(
            chain_id=self.net.chain_id,
            chain=self.chain_name,
            epoch=self.net.current_epoch(),
            checkpoint_height=self.checkpoint_height(),
            timestamp=None if ts is None else _utc(ts),
            lowest_available_checkpoint=0,
            lowest_available_checkpoint_objects=0,
            server="atoma-ops-loopback",
        )

    def epoch(self, request: sui.GetEpochRequest) -> sui.GetEpochResponse:
        clock = self.net.clock()
        current = clock["current_epoch"]
        number = current if request.epoch is None else int(request.epoch)
        if number > current:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"epoch {number} has not started (current {current})")
        fields = _mask(request.read_mask, _EPOCH_FIELDS_DEFAULT)

        def want(name: str) -> bool:
            return fields is None or name in fields

        out = sui.Epoch(epoch=number if want("epoch") else None)
        if want("reference_gas_price"):
            out.reference_gas_price = REFERENCE_GAS_PRICE
        if want("protocol_config"):
            config = sui.ProtocolConfig(protocol_version=PROTOCOL_VERSION)
            # Set after construction: the constructor warns that ``attributes`` is deprecated (in favour of
            # ``configs``), but ``attributes`` is the map pysui 1.5.1 reads its transaction constraints from.
            config.attributes = {k: str(v) for k, v in PROTOCOL_ATTRIBUTES.items()}
            out.protocol_config = config
        if want("start") and number == current:
            duration = clock["epoch_duration_ms"]
            start = clock["epoch_start_ms"]
            if duration > 0:  # the stored clock lags when no transaction ticked it
                start += (current - clock["epoch"]) * duration
            out.start = _utc(start)  # an epoch in progress has no end
        return sui.GetEpochResponse(epoch=out)

    # -- objects
    def row(self, object_id: str) -> dict | None:
        virtual = self.virtual.get(object_id)
        if virtual is not None:
            return virtual
        found = self.net.get_object(object_id)
        if found is None:
            # A table entry (dynamic field) or an ObjectTable child (Task, StackSettlementTicket).
            entry = self.tables.row(object_id)
            if entry is not None:
                return entry
            owner = self.gas_owner(object_id)  # last: on a miss it scans the localnet's addresses
            return None if owner is None else self.gas_row(owner)
        if object_id == self.db_id:
            # AtomaDb as Sui renders it: table fields as {id, size}, u64 as strings (loopback_tables).
            found["json"] = self.tables.db_json(found["data"])
            found["contents"] = self.tables.db_contents(found["data"])
        return found

    def gas_row(self, address: str) -> dict:
        """``address``'s virtual gas coin as an object row (see :func:`gas_coin_ref`)."""
        object_id, version, _ = gas_coin_ref(self.net, address)
        self._gas_owners[object_id] = address
        return {
            "id": object_id, "type": GAS_COIN_TYPE, "owner": address, "version": version,
            "data": {"balance": str(GAS_COIN_BALANCE)},
        }

    def gas_owner(self, object_id: str) -> str | None:
        """The address whose gas coin ``object_id`` is: among addresses already seen, else every transaction
        sender and object owner of the localnet (a gas coin of an address the node never heard of is not found
        until that address is asked about)."""
        owner = self._gas_owners.get(object_id)
        if owner is None:
            rows = self.net.conn.execute("SELECT sender FROM transactions UNION SELECT owner FROM objects").fetchall()
            known = set(self._gas_owners.values())
            for (address,) in rows:
                if address.startswith("0x") and address not in known:
                    self._gas_owners[gas_coin_id(address)] = address
            owner = self._gas_owners.get(object_id)
        return owner

    def object_message(self, row: dict, fields: frozenset[str] | None) -> sui.Object:
        def want(name: str) -> bool:
            return fields is None or name in fields

        obj = sui.Object()
        object_id, version, type_ = row["id"], int(row["version"]), row["type"]
        if want("object_id"):
            obj.object_id = object_id
        if want("version"):
            obj.version = version
        if want("digest"):
            obj.digest = object_digest(object_id, version)
        if want("owner"):
            obj.owner = self.owner(row)
        if want("object_type"):
            obj.object_type = type_
        data = row["data"]
        canonical = canonical_type(type_) if type_ != "package" else type_
        is_coin = canonical in (self.coin_type_canonical, self.gas_type_canonical)
        if want("balance") and is_coin:
            obj.balance = int(data["balance"])
        if want("contents"):
            # Rows that know their own BCS and JSON (AtomaDb, table entries) carry them; see loopback_tables.
            contents = row["contents"] if "contents" in row else self.contents(object_id, canonical, data)
            if contents is not None:
                obj.contents = sui.Bcs(name=type_, value=contents)
        if want("json") and "json" in row:
            obj.json = pb.Value.from_dict(row["json"])
        elif want("json") and data is not None:
            obj.json = pb.Value.from_dict({"id": object_id, **data})
        return obj

    def owner(self, row: dict) -> sui.Owner:
        owner = row["owner"]
        if owner == SHARED:
            isv = row.get("initial_shared_version", ATOMA_DB_INITIAL_SHARED_VERSION)
            return sui.Owner(kind=sui.OwnerOwnerKind.SHARED, version=isv)
        if owner == "immutable":
            return sui.Owner(kind=sui.OwnerOwnerKind.IMMUTABLE)
        if row.get("owner_kind") == "object":  # a dynamic field (owned by its table's UID) or an ObjectTable child
            return sui.Owner(kind=sui.OwnerOwnerKind.OBJECT, address=owner)
        return sui.Owner(kind=sui.OwnerOwnerKind.ADDRESS, address=owner)

    def contents(self, object_id: str, canonical: str, data: dict | None) -> bytes | None:
        """BCS of the Move struct where the layout is known: ``Coin<T> {id, balance: Balance{value: u64}}`` and
        the badges ``{id, small_id: {inner: u64}}`` (the manager badge has only ``id``)."""
        uid = bytes.fromhex(object_id[2:])
        if canonical in (self.coin_type_canonical, self.gas_type_canonical):
            return uid + int(data["balance"]).to_bytes(8, "little")
        if canonical in self.badge_types:
            small = (data or {}).get("small_id")
            return uid + (int(small["inner"]).to_bytes(8, "little") if small else b"")
        return None

    def get_object(self, request: sui.GetObjectRequest, fields: frozenset[str] | None) -> sui.Object:
        object_id = _address(request.object_id, "object_id")
        row = self.row(object_id)
        if row is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"object {object_id} not found")
        if request.version is not None and int(request.version) != int(row["version"]):
            # The localnet keeps only the live version of each object.
            raise GRPCError(
                grpclib.const.Status.NOT_FOUND, f"object {object_id} version {request.version} not found"
            )
        return self.object_message(row, fields)

    def batch_get(self, request: sui.BatchGetObjectsRequest) -> sui.BatchGetObjectsResponse:
        fields = _mask(request.read_mask, _OBJECT_FIELDS_DEFAULT)
        results = []
        for item in request.requests:
            try:
                results.append(sui.GetObjectResult(object=self.get_object(item, fields)))
            except GRPCError as exc:
                results.append(sui.GetObjectResult(error=rpc_status.Status(code=exc.status.value, message=exc.message or "")))
        return sui.BatchGetObjectsResponse(objects=results)

    # -- state
    def _type_matcher(self, object_type: str | None) -> Callable[[str], bool]:
        if not object_type:
            return lambda _t: True
        wanted = canonical_type(object_type)
        base = wanted.split("<", 1)[0]
        if not _STRUCT_TAG.match(base) or wanted.count("<") != wanted.count(">"):
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"invalid object_type filter {object_type!r}")
        if "<" in wanted:
            return lambda t: canonical_type(t) == wanted
        return lambda t: canonical_type(t).split("<", 1)[0] == base

    def list_owned(self, request: sui.ListOwnedObjectsRequest) -> sui.ListOwnedObjectsResponse:
        owner = _address(request.owner, "owner")
        matches = self._type_matcher(request.object_type)
        size, after = page_request(request, _PAGE_TOKEN_TAG)
        fields = _mask(request.read_mask, _OWNED_FIELDS_DEFAULT)
        page: list[dict] = []
        more = False
        for row in self._owned_rows(owner, after, matches):
            if len(page) == size:
                more = True
                break
            page.append(row)
        token_out = _PAGE_TOKEN_TAG + bytes.fromhex(page[-1]["id"][2:]) if more else None
        return sui.ListOwnedObjectsResponse(
            objects=[self.object_message(r, fields) for r in page], next_page_token=token_out
        )

    def _owned_rows(self, owner: str, after: str, matches: Callable[[str], bool]):
        """``owner``'s objects with id > ``after`` that pass the type filter, in id order, with the virtual gas
        coin merged in at its place."""
        gas = self.gas_row(owner)
        pending = gas if gas["id"] > after and matches(gas["type"]) else None
        cursor = after
        while True:
            rows = self.net.conn.execute(
                "SELECT id, type, owner, version, data FROM objects WHERE owner = ? AND id > ? ORDER BY id LIMIT ?",
                (owner, cursor, _SCAN_CHUNK),
            ).fetchall()
            for r in rows:
                if pending is not None and pending["id"] < r[0]:
                    yield pending
                    pending = None
                if matches(r[1]):
                    yield {"id": r[0], "type": r[1], "owner": r[2], "version": r[3], "data": loads(r[4])}
            if len(rows) < _SCAN_CHUNK:
                break
            cursor = rows[-1][0]
        if pending is not None:
            yield pending

    def _balance(self, owner: str, coin_type: str) -> sui.Balance:
        canonical = canonical_type(coin_type)
        if canonical == self.usdc_type_canonical:
            total = self.net.usdc_balance(owner)
        elif canonical == canonical_type(SUI_TYPE):
            total = GAS_COIN_BALANCE  # the virtual gas coin; gas is never charged
        else:
            total = 0  # the localnet has no other coin types
        return sui.Balance(coin_type=coin_type, balance=total, coin_balance=total, address_balance=0)

    def get_balance(self, request: sui.GetBalanceRequest) -> sui.GetBalanceResponse:
        owner = _address(request.owner, "owner")
        if not request.coin_type:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "missing coin_type")
        if not _STRUCT_TAG.match(canonical_type(request.coin_type).split("<", 1)[0]):
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"invalid coin_type {request.coin_type!r}")
        return sui.GetBalanceResponse(balance=self._balance(owner, request.coin_type))

    def list_balances(self, request: sui.ListBalancesRequest) -> sui.ListBalancesResponse:
        owner = _address(request.owner, "owner")
        usdc = self._balance(owner, self.usdc_type)
        return sui.ListBalancesResponse(balances=[self._balance(owner, SUI_TYPE)] + ([usdc] if usdc.balance else []))

    def list_dynamic_fields(self, request: sui.ListDynamicFieldsRequest) -> sui.ListDynamicFieldsResponse:
        """Entries of a table UID (AtomaDb's tables, a task's two tables) or of a NodeBadge (loopback_tables)."""
        return self.tables.list_dynamic_fields(request, self.object_message)

    # -- packages
    def get_function(self, request: sui.GetFunctionRequest) -> sui.GetFunctionResponse:
        package = _address(request.package_id, "package_id")
        if package != normalize_address(self.net.package_id):
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"package {package} not found")
        if request.module_name != "db":
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"module {request.module_name!r} not found in {package}")
        descriptor = self.functions.get(request.name or "")
        if descriptor is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"function db::{request.name} not found")
        return sui.GetFunctionResponse(function=descriptor)


# --------------------------------------------------------------------------------------------------- gRPC
_LEDGER = "/sui.rpc.v2.LedgerService/"
_STATE = "/sui.rpc.v2.StateService/"
_PACKAGES = "/sui.rpc.v2.MovePackageService/"


class _Services:
    """The RPC table grpclib serves (``__mapping__`` is grpclib's IServable protocol)."""

    def __init__(self, node: "LoopbackSuiNode"):
        self.node = node

    def _routes(self) -> dict[str, tuple[Callable[[Any], Any], type, type]]:
        reads = self.node._reads
        assert reads is not None
        return {
            _LEDGER + "GetServiceInfo": (lambda m: reads.service_info(), sui.GetServiceInfoRequest, sui.GetServiceInfoResponse),
            _LEDGER + "GetEpoch": (reads.epoch, sui.GetEpochRequest, sui.GetEpochResponse),
            _LEDGER + "GetObject": (
                lambda m: sui.GetObjectResponse(object=reads.get_object(m, _mask(m.read_mask, _OBJECT_FIELDS_DEFAULT))),
                sui.GetObjectRequest,
                sui.GetObjectResponse,
            ),
            _LEDGER + "BatchGetObjects": (reads.batch_get, sui.BatchGetObjectsRequest, sui.BatchGetObjectsResponse),
            _STATE + "ListOwnedObjects": (reads.list_owned, sui.ListOwnedObjectsRequest, sui.ListOwnedObjectsResponse),
            _STATE + "GetBalance": (reads.get_balance, sui.GetBalanceRequest, sui.GetBalanceResponse),
            _STATE + "ListBalances": (reads.list_balances, sui.ListBalancesRequest, sui.ListBalancesResponse),
            _STATE + "ListDynamicFields": (
                reads.list_dynamic_fields, sui.ListDynamicFieldsRequest, sui.ListDynamicFieldsResponse
            ),
            _PACKAGES + "GetFunction": (reads.get_function, sui.GetFunctionRequest, sui.GetFunctionResponse),
        }

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            path: grpclib.const.Handler(self._unary(path, fn), grpclib.const.Cardinality.UNARY_UNARY, req, resp)
            for path, (fn, req, resp) in self._routes().items()
        }

    def _unary(self, path: str, fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[None]]:
        name = path.rsplit("/", 1)[-1]

        async def handle(stream: Any) -> None:
            request = await stream.recv_message()
            self.node.calls.append(name)
            try:
                reply = fn(request)
            except GRPCError:
                raise
            except NotFound as exc:
                raise GRPCError(grpclib.const.Status.NOT_FOUND, str(exc)) from None
            except ChainError as exc:
                raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, str(exc)) from None
            except Exception as exc:  # a bug in the double: say so to the client, keep serving
                log.exception("%s failed", name)
                raise GRPCError(grpclib.const.Status.INTERNAL, f"{type(exc).__name__}: {exc}") from None
            await stream.send_message(reply)

        return handle


class LoopbackSuiNode:
    """The loopback full node on ``host:port`` (loopback only; port 0 picks a free one), backed by a localnet.

    Args:
        localnet_path: the localnet chain file (``LocalnetHome.chain_file``).
        host: a loopback address; anything else is refused.
        port: the TCP port, 0 for any free one (see :attr:`url` after :meth:`start`).
        chain_name: ``GetServiceInfo.chain``.
        rng: optional scripted randomness (tests), a callable returning u64 draws: the connection that executes
            and simulates transactions is opened with it (``Localnet(path, rng=...)``), through
            :class:`~.loopback_exec.ReplayedDraws` so that a simulation and the execution that follows it see the
            same draws.
    """

    def __init__(self, localnet_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, *,
                 chain_name: str = "localnet", rng: Callable[[], int] | None = None):
        if not _is_loopback(host):
            raise ValueError(f"the loopback Sui node serves on a loopback address only, not {host!r}")
        self.localnet_path = localnet_path
        self.host = host
        self.port = int(port)
        self.chain_name = chain_name
        self.rng = rng
        #: names of the latest RPCs served, oldest first (tests read this to see what a client asked for)
        self.calls: collections.deque[str] = collections.deque(maxlen=10_000)
        self._localnet: Localnet | None = None
        self._reads: _Reads | None = None
        self._server: grpclib.server.Server | None = None
        self._sock: socket.socket | None = None
        self._transactions: Any = None  # loopback_exec.TransactionService: the write side

    @property
    def url(self) -> str:
        if self._sock is None and self.port == 0:
            raise RuntimeError("the node has no port until start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> "LoopbackSuiNode":
        if self._server is not None:
            raise RuntimeError("the node is already running")
        from .loopback_exec import ReplayedDraws, TransactionService  # the write side; it imports this module

        localnet = Localnet(self.localnet_path)
        writer: Localnet | None = None
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            # IPPROTO_TCP explicitly: asyncio and grpclib turn Nagle off (TCP_NODELAY) only on sockets whose proto
            # says TCP, and accepted connections inherit it; with proto 0 every answer waited ~40 ms for an ACK.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
                self._localnet, self._reads = localnet, _Reads(localnet, self.chain_name)
                # writes get a connection of their own
                writer = Localnet(self.localnet_path, rng=None if self.rng is None else ReplayedDraws(self.rng))
                self._transactions = TransactionService(self, localnet, writer)
                server = grpclib.server.Server([_Services(self), self._transactions])
                await server.start(sock=sock)
            except BaseException:
                sock.close()
                raise
        except BaseException:
            self._localnet = self._reads = self._transactions = None
            localnet.close()
            if writer is not None:
                writer.close()
            raise
        self._sock, self._server = sock, server
        self.port = sock.getsockname()[1]
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._transactions is not None:
            self._transactions.close()
            self._transactions = None
        if self._localnet is not None:
            self._localnet.close()
            self._localnet = self._reads = None

    async def __aenter__(self) -> "LoopbackSuiNode":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class BackgroundLoopbackNode:
    """:class:`LoopbackSuiNode` on its own event loop in a daemon thread, for synchronous code::

        with BackgroundLoopbackNode(home.chain_file) as node:
            url = node.url
    """

    def __init__(self, localnet_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        self.node = LoopbackSuiNode(localnet_path, host, port, **kwargs)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="loopback-sui-node", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def calls(self) -> collections.deque[str]:
        return self.node.calls

    def start(self, timeout: float = 20.0) -> "BackgroundLoopbackNode":
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.node.start(), self.loop).result(timeout)
        except BaseException:
            self._halt(timeout)
            raise
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if not self.thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.node.stop(), self.loop).result(timeout)
        finally:
            self._halt(timeout)

    def _halt(self, timeout: float) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()

    def __enter__(self) -> "BackgroundLoopbackNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
