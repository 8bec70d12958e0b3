"""The read side of the loopback Sui node: localnet rows as ``sui.rpc.v2`` messages (LedgerService,
StateService and MovePackageService reads). See :mod:`atoma_ops.testing.sui.node` for what is served and how.
"""

from __future__ import annotations

from typing import Callable

import grpclib.const
import grpclib.server
import pysui.sui.sui_grpc.suimsgs.google.protobuf as pb
import pysui.sui.sui_grpc.suimsgs.google.rpc as rpc_status
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui
from grpclib.exceptions import GRPCError

from atoma_ops.chain._json import loads
from atoma_ops.chain.localnet.engine import SHARED, Localnet
from atoma_ops.chain.sui.movetypes import canonical_type
from atoma_ops.protocol import abi
from atoma_ops.wallet import normalize_address

from .objects import (
    ATOMA_DB_INITIAL_SHARED_VERSION,
    EPOCH_FIELDS_DEFAULT,
    GAS_COIN_BALANCE,
    GAS_COIN_TYPE,
    OBJECT_FIELDS_DEFAULT,
    OWNED_FIELDS_DEFAULT,
    PAGE_TOKEN_TAG,
    PROTOCOL_ATTRIBUTES,
    PROTOCOL_VERSION,
    RANDOM_INITIAL_SHARED_VERSION,
    RANDOM_TYPE,
    REFERENCE_GAS_PRICE,
    SCAN_CHUNK,
    STRUCT_TAG,
    SUI_TYPE,
    function_descriptor,
    gas_coin_id,
    gas_coin_ref,
    mask_fields,
    object_digest,
    request_address,
    utc,
)
from .tables import LoopbackTables, page_request


# --------------------------------------------------------------------------------------------------- reads
class Reads:
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
            timestamp=None if ts is None else utc(ts),
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
        fields = mask_fields(request.read_mask, EPOCH_FIELDS_DEFAULT)

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
            out.start = utc(start)  # an epoch in progress has no end
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
            # AtomaDb as Sui renders it: table fields as {id, size}, u64 as strings (tables.py).
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
            # Rows that know their own BCS and JSON (AtomaDb, table entries) carry them; see tables.py.
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
        object_id = request_address(request.object_id, "object_id")
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
        fields = mask_fields(request.read_mask, OBJECT_FIELDS_DEFAULT)
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
        if not STRUCT_TAG.match(base) or wanted.count("<") != wanted.count(">"):
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"invalid object_type filter {object_type!r}")
        if "<" in wanted:
            return lambda t: canonical_type(t) == wanted
        return lambda t: canonical_type(t).split("<", 1)[0] == base

    def list_owned(self, request: sui.ListOwnedObjectsRequest) -> sui.ListOwnedObjectsResponse:
        owner = request_address(request.owner, "owner")
        matches = self._type_matcher(request.object_type)
        size, after = page_request(request, PAGE_TOKEN_TAG)
        fields = mask_fields(request.read_mask, OWNED_FIELDS_DEFAULT)
        page: list[dict] = []
        more = False
        for row in self._owned_rows(owner, after, matches):
            if len(page) == size:
                more = True
                break
            page.append(row)
        token_out = PAGE_TOKEN_TAG + bytes.fromhex(page[-1]["id"][2:]) if more else None
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
                (owner, cursor, SCAN_CHUNK),
            ).fetchall()
            for r in rows:
                if pending is not None and pending["id"] < r[0]:
                    yield pending
                    pending = None
                if matches(r[1]):
                    yield {"id": r[0], "type": r[1], "owner": r[2], "version": r[3], "data": loads(r[4])}
            if len(rows) < SCAN_CHUNK:
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
        owner = request_address(request.owner, "owner")
        if not request.coin_type:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "missing coin_type")
        if not STRUCT_TAG.match(canonical_type(request.coin_type).split("<", 1)[0]):
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"invalid coin_type {request.coin_type!r}")
        return sui.GetBalanceResponse(balance=self._balance(owner, request.coin_type))

    def list_balances(self, request: sui.ListBalancesRequest) -> sui.ListBalancesResponse:
        owner = request_address(request.owner, "owner")
        usdc = self._balance(owner, self.usdc_type)
        return sui.ListBalancesResponse(balances=[self._balance(owner, SUI_TYPE)] + ([usdc] if usdc.balance else []))

    def list_dynamic_fields(self, request: sui.ListDynamicFieldsRequest) -> sui.ListDynamicFieldsResponse:
        """Entries of a table UID (AtomaDb's tables, a task's two tables) or of a NodeBadge (tables.py)."""
        return self.tables.list_dynamic_fields(request, self.object_message)

    # -- packages
    def get_function(self, request: sui.GetFunctionRequest) -> sui.GetFunctionResponse:
        package = request_address(request.package_id, "package_id")
        if package != normalize_address(self.net.package_id):
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"package {package} not found")
        if request.module_name != "db":
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"module {request.module_name!r} not found in {package}")
        descriptor = self.functions.get(request.name or "")
        if descriptor is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"function db::{request.name} not found")
        return sui.GetFunctionResponse(function=descriptor)
