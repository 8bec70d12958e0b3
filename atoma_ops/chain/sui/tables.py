"""AtomaDb's tables read the way a real Sui full node serves them (the Sui adapter's read side).

On Sui, AtomaDb is a shared object. Its ``Table``/``ObjectTable`` fields hold only ``{id: UID, size: u64}``; every
entry is a separate *dynamic field* object owned by the table's UID. Nothing lists a table's entries on chain, but
an entry's object id is a pure function of the table's UID and the key, so one ``GetObject`` reads one entry.

Dynamic field ids (Sui ``sui_types::dynamic_field::derive_dynamic_field_id``)::

    id = blake2b-256(0xf0 ‖ parent (32 bytes) ‖ u64-LE len(key_bcs) ‖ key_bcs ‖ bcs(key TypeTag))

``0xf0`` is ``HashingIntentScope::ChildObjectId``. The same function with the key type wrapped in
``0x2::derived_object::DerivedObjectKey<T>`` is Sui's ``derive_object_id``, whose snapshot vectors (in
``sui-types/src/derived_object.rs`` and the framework's ``derived_object_tests.move``) the tests check.
pysui 1.5.1 has no implementation of this derivation.

How the ``atoma::db`` tables map onto dynamic fields:

* ``nodes: Table<NodeSmallId, NodeEntry>``: entries ``Field<NodeSmallId, NodeEntry>``, the NodeEntry inline;
* ``stacks: Table<StackSmallId, Stack>``: entries ``Field<StackSmallId, Stack>``, the Stack inline;
* ``tasks: ObjectTable<TaskSmallId, Task>``: entries ``Field<Wrapper<TaskSmallId>, ID>`` whose value is the id of
  the ``Task`` object (a child of the field);
* ``stack_settlement_tickets: ObjectTable<StackSmallId, StackSettlementTicket>``: likewise, the value is the id of
  the ``StackSettlementTicket`` object;
* ``Task.subscribed_nodes: Table<NodeSmallId, NodePriceData>``: under the task's own table UID;
* ``Task.subscribed_nodes_small_ids: TableVec<NodeSmallId>``: a ``TableVec`` is ``{contents: Table<u64, T>}``;
  entries ``Field<u64, NodeSmallId>`` keyed by the index 0…size-1.

``Field`` is ``0x2::dynamic_field::Field``; ``Wrapper`` is ``0x2::dynamic_object_field::Wrapper`` (an
``ObjectTable`` stores each value as an object of its own; the key is wrapped, and its BCS is the key's BCS).
Small ids are structs ``<package>::db::NodeSmallId { inner: u64 }`` (and Task/Stack): their BCS is the u64's
8 little-endian bytes, their TypeTag a ``Struct`` tag with the package that *defined* the type (the AtomaDb
object's type names it; after an upgrade it is the original package, not the latest).

JSON: every object is read from ``Object.json``, which a Sui full node renders with
``sui_types::proto_value`` (gRPC ``sui.rpc.v2``). Its rules, which the loopback double follows and the parsers
here expect:

* ``u8``/``u16``/``u32`` are JSON numbers; ``u64``/``u128``/``u256`` are **decimal strings**;
* ``bool`` is a JSON bool; ``address`` is ``0x`` + 64 lowercase hex digits;
* ``UID`` and ``ID`` are flattened to the id string; ``Balance<T>`` to its value as a decimal string;
* ``Option<T>`` is ``null`` or the value itself; ``ascii::String``/``string::String`` are strings;
* ``vector<u8>`` is a **base64** string (standard alphabet, padded); any other vector is a JSON array;
* other structs are objects of their fields, so a small id is ``{"inner": "7"}`` and a Table ``{"id", "size"}``.

The parsers are strict: a u64 given as a JSON number, or bytes given as an array, is refused
(:class:`UnexpectedObject`). Numbers of the small integer types come back from protobuf as floats and are
accepted when integral.

API (async functions take pysui's gRPC client, e.g. :func:`atoma_ops.chain.sui.client.pysui_client_for`)::

    config, tables = await read_db(client, db_id)            # DbConfig, AtomaTables
    await read_node(client, tables.nodes, 3)                  # Node | None
    await read_stack(client, tables.stacks, 5)                # Stack | None (None once claimed and deleted)
    await read_ticket(client, tables.stack_settlement_tickets, 5)   # Ticket | None
    await read_task(client, tables.tasks, 1)                  # Task | None
    await read_subscriptions(client, tables.tasks, 1)         # list[Subscription], sorted by node
    await list_dynamic_fields(client, tables.nodes.id)        # every entry (StateService/ListDynamicFields)

This module imports neither pysui nor grpclib at import time; the async functions import pysui's request
classes on first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ...protocol.constants import U64_MAX
from ..errors import ChainError, NotFound
from ..types import DbConfig, Node, Stack, Subscription, Task, Ticket
from .movetypes import address_bytes, type_tag_bcs

__all__ = [
    "AtomaTables",
    "DynamicFieldEntry",
    "FIELD_TYPE",
    "TableRef",
    "TaskObject",
    "UnexpectedObject",
    "WRAPPER_TYPE",
    "dynamic_field_id",
    "dynamic_object_field_key_type",
    "field_type",
    "list_dynamic_fields",
    "parse_db",
    "parse_node",
    "parse_price_data",
    "parse_stack",
    "parse_task_object",
    "parse_ticket",
    "read_db",
    "read_node",
    "read_stack",
    "read_subscriptions",
    "read_task",
    "read_task_object",
    "read_ticket",
    "small_id_bcs",
    "small_id_type",
    "type_tag_bcs",
    "u64_bcs",
]

#: ``HashingIntentScope::ChildObjectId``.
CHILD_OBJECT_ID_SCOPE = 0xF0
FIELD_TYPE = "0x2::dynamic_field::Field"
WRAPPER_TYPE = "0x2::dynamic_object_field::Wrapper"
ID_TYPE = "0x2::object::ID"
#: pysui's limit for one BatchGetObjects (``MAX_MULTI_OBJECT_FETCH``).
BATCH_LIMIT = 50
_OBJECT_FIELDS = ["object_id", "version", "object_type", "json"]
_NOT_FOUND = 5  # google.rpc.Code.NOT_FOUND


class UnexpectedObject(ChainError):
    """An object that is not what the contract's layout says it should be (wrong shape, wrong key)."""

    kind = "UnexpectedObject"


# ------------------------------------------------------------------------------------------------ Move types, BCS
def dynamic_field_id(parent_id: str, key_type: str, key_bcs: bytes) -> str:
    """Sui's ``derive_dynamic_field_id``: the object id of the dynamic field keyed ``key_bcs`` (a value of Move type
    ``key_type``) under the UID ``parent_id``."""
    material = (
        bytes([CHILD_OBJECT_ID_SCOPE])
        + address_bytes(parent_id)
        + len(key_bcs).to_bytes(8, "little")
        + bytes(key_bcs)
        + type_tag_bcs(key_type)
    )
    return "0x" + hashlib.blake2b(material, digest_size=32).hexdigest()


def dynamic_object_field_key_type(key_type: str) -> str:
    """The key type an ``ObjectTable``/dynamic object field stores: ``0x2::dynamic_object_field::Wrapper<K>``."""
    return f"{WRAPPER_TYPE}<{key_type}>"


def field_type(key_type: str, value_type: str) -> str:
    """The Move type of a dynamic field object."""
    return f"{FIELD_TYPE}<{key_type},{value_type}>"


def small_id_type(package_id: str, kind: str) -> str:
    """``<package>::db::NodeSmallId`` (kind ``NodeSmallId``, ``TaskSmallId`` or ``StackSmallId``)."""
    return f"{package_id}::db::{kind}"


def u64_bcs(value: int) -> bytes:
    if not 0 <= int(value) <= U64_MAX:
        raise ValueError(f"{value} is not a u64")
    return int(value).to_bytes(8, "little")


def small_id_bcs(value: int) -> bytes:
    """BCS of ``{ inner: u64 }``: the u64 alone."""
    return u64_bcs(value)


# ------------------------------------------------------------------------------------------------ table references
@dataclass(frozen=True)
class TableRef:
    """A ``Table``/``ObjectTable`` (or a ``TableVec``'s contents table) as its parent object stores it."""

    id: str
    size: int
    key_type: str
    value_type: str
    is_object_table: bool = False

    @property
    def stored_key_type(self) -> str:
        """The key type of the dynamic fields (wrapped for an ObjectTable)."""
        return dynamic_object_field_key_type(self.key_type) if self.is_object_table else self.key_type

    def field_id(self, key_bcs: bytes) -> str:
        """The dynamic field object of key ``key_bcs``."""
        return dynamic_field_id(self.id, self.stored_key_type, key_bcs)


@dataclass(frozen=True)
class AtomaTables:
    """AtomaDb's table fields, read from the AtomaDb object."""

    db_id: str
    type_package_id: str  # the package that defined ``atoma::db`` (type names use it)
    version: int
    tickets: str  # legacy ``tickets: UID``
    nodes: TableRef
    models: TableRef
    tasks: TableRef
    stacks: TableRef
    stack_settlement_tickets: TableRef


@dataclass(frozen=True)
class TaskObject:
    """A ``Task`` object: the port's :class:`Task` plus its own tables."""

    object_id: str
    task: Task
    subscribed_nodes: TableRef
    subscribed_nodes_small_ids: TableRef  # the TableVec's ``contents``: u64 index -> NodeSmallId


@dataclass(frozen=True)
class DynamicFieldEntry:
    """One row of ``StateService/ListDynamicFields``."""

    field_id: str
    parent: str
    kind: str  # "field" | "object"
    name_type: str
    name_bcs: bytes
    value_type: str | None
    child_id: str | None


# ------------------------------------------------------------------------------------------------ JSON values
def _where(what: str, key: str) -> str:
    return f"{what}.{key}" if what else key


def _field(obj: Any, key: str, what: str) -> Any:
    if not isinstance(obj, dict):
        raise UnexpectedObject(f"{what or 'value'}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise UnexpectedObject(f"{what or 'value'}: missing field {key!r}")
    return obj[key]


def _u64(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.isdigit():
        raise UnexpectedObject(f"{what}: expected a u64 as a decimal string, got {value!r}")
    n = int(value)
    if n > U64_MAX:
        raise UnexpectedObject(f"{what}: {value} overflows u64")
    return n


def _small_uint(value: Any, what: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise UnexpectedObject(f"{what}: expected a u{bits} number, got {value!r}")
    n = int(value)
    if not 0 <= n < 2**bits:
        raise UnexpectedObject(f"{what}: {n} is not a u{bits}")
    return n


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise UnexpectedObject(f"{what}: expected a bool, got {value!r}")
    return value


def _opt_u64(value: Any, what: str) -> int | None:
    return None if value is None else _u64(value, what)


def _opt_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UnexpectedObject(f"{what}: expected a string or null, got {value!r}")
    return value


def _id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"0x[0-9a-f]{64}", value):
        raise UnexpectedObject(f"{what}: expected an object id (0x + 64 hex digits), got {value!r}")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise UnexpectedObject(f"{what}: expected vector<u8> as a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UnexpectedObject(f"{what}: {value!r} is not base64") from None


def _wrapped(value: Any, what: str, bits: int | None = None) -> int:
    """A one-field wrapper struct ``{inner: u64}`` (or ``{inner: u8|u16}`` when ``bits`` is given)."""
    inner = _field(value, "inner", what)
    return _u64(inner, _where(what, "inner")) if bits is None else _small_uint(inner, _where(what, "inner"), bits)


def _sid_list(value: Any, what: str) -> list[int]:
    if not isinstance(value, list):
        raise UnexpectedObject(f"{what}: expected a JSON array, got {type(value).__name__}")
    return [_wrapped(v, f"{what}[{i}]") for i, v in enumerate(value)]


def _table(value: Any, what: str, key_type: str, value_type: str, *, objects: bool = False) -> TableRef:
    return TableRef(
        id=_id(_field(value, "id", what), _where(what, "id")),
        size=_u64(_field(value, "size", what), _where(what, "size")),
        key_type=key_type,
        value_type=value_type,
        is_object_table=objects,
    )


# ------------------------------------------------------------------------------------------------ parsers
_DB_U64_FIELDS = (
    "cross_validation_probability_permille",
    "cross_validation_extra_nodes_count",
    "sampling_consensus_charge_permille",
    "cross_validation_extra_nodes_charge_permille",
    "key_rotation_counter",
    "nonce",
    "registration_collateral_in_protocol_token",
    "permille_to_slash_node_on_timeout",
    "permille_for_oracle_on_dispute",
    "permille_for_honest_nodes_on_dispute",
)


def _type_package(object_type: str, expected_suffix: str) -> str:
    parts = (object_type or "").split("<", 1)[0].split("::")
    if len(parts) != 3 or "::".join(parts[1:]) != expected_suffix:
        raise UnexpectedObject(f"expected a <package>::{expected_suffix}, got {object_type!r}")
    return "0x" + address_bytes(parts[0]).hex()


def parse_db(object_id: str, object_type: str, version: int, data: dict) -> tuple[DbConfig, AtomaTables]:
    """AtomaDb's ``json``: the port's :class:`DbConfig` and the table references."""
    pkg = _type_package(object_type, "db::AtomaDb")
    if _id(_field(data, "id", "AtomaDb"), "AtomaDb.id") != object_id:
        raise UnexpectedObject(f"AtomaDb {object_id} carries id {data['id']}")

    def small(kind: str) -> str:
        return small_id_type(pkg, kind)

    tables = AtomaTables(
        db_id=object_id,
        type_package_id=pkg,
        version=version,
        tickets=_id(_field(data, "tickets", "AtomaDb"), "AtomaDb.tickets"),
        nodes=_table(_field(data, "nodes", "AtomaDb"), "AtomaDb.nodes", small("NodeSmallId"), f"{pkg}::db::NodeEntry"),
        models=_table(_field(data, "models", "AtomaDb"), "AtomaDb.models", "0x1::ascii::String",
                      f"{pkg}::db::ModelEntry", objects=True),
        tasks=_table(_field(data, "tasks", "AtomaDb"), "AtomaDb.tasks", small("TaskSmallId"), f"{pkg}::db::Task",
                     objects=True),
        stacks=_table(_field(data, "stacks", "AtomaDb"), "AtomaDb.stacks", small("StackSmallId"),
                      f"{pkg}::db::Stack"),
        stack_settlement_tickets=_table(
            _field(data, "stack_settlement_tickets", "AtomaDb"), "AtomaDb.stack_settlement_tickets",
            small("StackSmallId"), f"{pkg}::db::StackSettlementTicket", objects=True,
        ),
    )
    config = DbConfig(
        db_id=object_id,
        package_id=pkg,
        next_node_small_id=_wrapped(_field(data, "next_node_small_id", "AtomaDb"), "AtomaDb.next_node_small_id"),
        next_task_small_id=_wrapped(_field(data, "next_task_small_id", "AtomaDb"), "AtomaDb.next_task_small_id"),
        next_stack_small_id=_wrapped(_field(data, "next_stack_small_id", "AtomaDb"), "AtomaDb.next_stack_small_id"),
        fee_treasury=_u64(_field(data, "fee_treasury", "AtomaDb"), "AtomaDb.fee_treasury"),
        communal_treasury=_u64(_field(data, "communal_treasury", "AtomaDb"), "AtomaDb.communal_treasury"),
        is_registration_disabled=_bool(
            _field(data, "is_registration_disabled", "AtomaDb"), "AtomaDb.is_registration_disabled"
        ),
        **{name: _u64(_field(data, name, "AtomaDb"), f"AtomaDb.{name}") for name in _DB_U64_FIELDS},
    )
    return config, tables


def parse_node(node_small_id: int, value: dict) -> Node:
    """A ``NodeEntry`` (the value of a ``nodes`` field)."""
    w = "NodeEntry"
    return Node(
        node_small_id=node_small_id,
        was_disabled_in_epoch=_opt_u64(_field(value, "was_disabled_in_epoch", w), f"{w}.was_disabled_in_epoch"),
        collateral=_u64(_field(value, "collateral", w), f"{w}.collateral"),
        last_fee_epoch=_u64(_field(value, "last_fee_epoch", w), f"{w}.last_fee_epoch"),
        last_fee_epoch_amount=_u64(_field(value, "last_fee_epoch_amount", w), f"{w}.last_fee_epoch_amount"),
        available_fee_amount=_u64(_field(value, "available_fee_amount", w), f"{w}.available_fee_amount"),
        reputation_score=_wrapped(_field(value, "reputation_score", w), f"{w}.reputation_score", bits=8),
    )


def parse_stack(stack_small_id: int, value: dict) -> Stack:
    """A ``Stack`` (the value of a ``stacks`` field)."""
    w = "Stack"
    return Stack(
        stack_small_id=stack_small_id,
        owner=_id(_field(value, "owner", w), f"{w}.owner"),
        price_per_one_million_compute_units=_u64(
            _field(value, "price_per_one_million_compute_units", w), f"{w}.price_per_one_million_compute_units"
        ),
        num_compute_units=_u64(_field(value, "num_compute_units", w), f"{w}.num_compute_units"),
        selected_node_id=_wrapped(_field(value, "selected_node_id", w), f"{w}.selected_node_id"),
        task_small_id=_wrapped(_field(value, "task_small_id", w), f"{w}.task_small_id"),
        is_claimed=_bool(_field(value, "is_claimed", w), f"{w}.is_claimed"),
    )


def parse_ticket(stack_small_id: int, data: dict) -> Ticket:
    """A ``StackSettlementTicket`` object's ``json``."""
    w = "StackSettlementTicket"
    own = _wrapped(_field(data, "stack_small_id", w), f"{w}.stack_small_id")
    if own != stack_small_id:
        raise UnexpectedObject(f"ticket under key {stack_small_id} is for stack {own}")
    return Ticket(
        stack_small_id=own,
        ticket_id=_id(_field(data, "id", w), f"{w}.id"),
        selected_node_id=_wrapped(_field(data, "selected_node_id", w), f"{w}.selected_node_id"),
        num_claimed_compute_units=_u64(_field(data, "num_claimed_compute_units", w), f"{w}.num_claimed_compute_units"),
        requested_attestation_nodes=_sid_list(
            _field(data, "requested_attestation_nodes", w), f"{w}.requested_attestation_nodes"
        ),
        dispute_settled_at_epoch=_u64(_field(data, "dispute_settled_at_epoch", w), f"{w}.dispute_settled_at_epoch"),
        committed_stack_proof=_bytes(_field(data, "committed_stack_proof", w), f"{w}.committed_stack_proof"),
        stack_merkle_leaves_vector=_bytes(
            _field(data, "stack_merkle_leaves_vector", w), f"{w}.stack_merkle_leaves_vector"
        ),
        already_attested_nodes=_sid_list(_field(data, "already_attested_nodes", w), f"{w}.already_attested_nodes"),
        is_in_dispute=_bool(_field(data, "is_in_dispute", w), f"{w}.is_in_dispute"),
    )


def parse_task_object(
    task_small_id: int, data: dict, package_id: str, subscribed_nodes_small_ids: list[int] | None = None
) -> TaskObject:
    """A ``Task`` object's ``json``. ``subscribed_nodes_small_ids`` is a TableVec whose entries are separate
    objects: pass them when read (see :func:`read_task_object`), else the Task carries an empty list."""
    w = "Task"
    object_id = _id(_field(data, "id", w), f"{w}.id")
    node_sid = small_id_type(package_id, "NodeSmallId")
    vec = _field(data, "subscribed_nodes_small_ids", w)
    task = Task(
        task_small_id=task_small_id,
        task_id=object_id,
        role=_wrapped(_field(data, "role", w), f"{w}.role", bits=16),
        model_name=_opt_str(_field(data, "model_name", w), f"{w}.model_name"),
        is_deprecated=_bool(_field(data, "is_deprecated", w), f"{w}.is_deprecated"),
        deprecated_at_epoch=_opt_u64(_field(data, "deprecated_at_epoch", w), f"{w}.deprecated_at_epoch"),
        security_level=_wrapped(_field(data, "security_level", w), f"{w}.security_level", bits=16),
        minimum_reputation_score=_wrapped(
            _field(data, "minimum_reputation_score", w), f"{w}.minimum_reputation_score", bits=8
        ),
        is_public=_bool(_field(data, "is_public", w), f"{w}.is_public"),
        whitelisted_nodes=_sid_list(_field(data, "whitelisted_nodes", w), f"{w}.whitelisted_nodes"),
        subscribed_nodes_small_ids=list(subscribed_nodes_small_ids or []),
    )
    return TaskObject(
        object_id=object_id,
        task=task,
        subscribed_nodes=_table(
            _field(data, "subscribed_nodes", w), f"{w}.subscribed_nodes", node_sid, f"{package_id}::db::NodePriceData"
        ),
        subscribed_nodes_small_ids=_table(
            _field(vec, "contents", f"{w}.subscribed_nodes_small_ids"),
            f"{w}.subscribed_nodes_small_ids.contents", "u64", node_sid,
        ),
    )


def parse_price_data(task_small_id: int, node_small_id: int, value: dict) -> Subscription:
    """A ``NodePriceData`` (the value of a task's ``subscribed_nodes`` field)."""
    w = "NodePriceData"
    own = _wrapped(_field(value, "node_id", w), f"{w}.node_id")
    if own != node_small_id:
        raise UnexpectedObject(f"price data under node {node_small_id} names node {own}")
    return Subscription(
        task_small_id=task_small_id,
        node_small_id=own,
        price_per_one_million_compute_units=_u64(
            _field(value, "price_per_one_million_compute_units", w), f"{w}.price_per_one_million_compute_units"
        ),
        max_num_compute_units=_u64(_field(value, "max_num_compute_units", w), f"{w}.max_num_compute_units"),
    )


def _field_value(obj: Any, field_id: str, expected_name: Any) -> Any:
    """The ``value`` of a dynamic field object's ``json``, after checking its id and name."""
    data = _json(obj)
    if _field(data, "id", "Field") != field_id:
        raise UnexpectedObject(f"dynamic field {field_id} carries id {data.get('id')!r}")
    if _field(data, "name", "Field") != expected_name:
        raise UnexpectedObject(f"dynamic field {field_id} has name {data.get('name')!r}, expected {expected_name!r}")
    return _field(data, "value", "Field")


# ------------------------------------------------------------------------------------------------ reads (pysui)
def _json(obj: Any) -> Any:
    if obj is None or getattr(obj, "json", None) is None:
        raise UnexpectedObject(f"object {getattr(obj, 'object_id', '?')} came without json")
    return obj.json.to_dict()


def _requests():
    from pysui.sui.sui_grpc import pgrpc_requests

    return pgrpc_requests


def _failure(result: Any, what: str) -> ChainError:
    return ChainError(f"{what} failed: {result.result_string}")


async def _get_object(client: Any, object_id: str) -> Any | None:
    """One object (``LedgerService/GetObject``), or None when the node says NOT_FOUND."""
    request = _requests().GetObject(object_id=object_id, field_mask=_OBJECT_FIELDS)
    request.not_found_as_none = True  # pysui turns a NOT_FOUND status into an ok result of None
    result = await client.execute_grpc_request(request=request)
    if not result.is_ok():
        raise _failure(result, f"GetObject {object_id}")
    return None if result.result_data is None else result.result_data.object


async def _get_objects(client: Any, object_ids: list[str]) -> list[Any | None]:
    """Several objects (``LedgerService/BatchGetObjects``, 50 at a time), None for each NOT_FOUND."""
    out: list[Any | None] = []
    for start in range(0, len(object_ids), BATCH_LIMIT):
        chunk = object_ids[start : start + BATCH_LIMIT]
        request = _requests().GetMultipleObjects(object_ids=chunk, field_mask=_OBJECT_FIELDS)
        result = await client.execute_grpc_request(request=request)
        if not result.is_ok():
            raise _failure(result, f"BatchGetObjects ({len(chunk)} ids)")
        replies = result.result_data.objects
        if len(replies) != len(chunk):
            raise UnexpectedObject(f"BatchGetObjects answered {len(replies)} results for {len(chunk)} ids")
        for object_id, reply in zip(chunk, replies):
            if reply.object is not None:
                out.append(reply.object)
            elif reply.error is not None and reply.error.code == _NOT_FOUND:
                out.append(None)
            else:
                message = reply.error.message if reply.error is not None else "no object and no error"
                raise ChainError(f"BatchGetObjects {object_id}: {message}")
    return out


async def read_db(client: Any, db_id: str) -> tuple[DbConfig, AtomaTables]:
    """The AtomaDb object: its scalar fields as the port's :class:`DbConfig`, and its tables."""
    db_id = "0x" + address_bytes(db_id).hex()
    obj = await _get_object(client, db_id)
    if obj is None:
        raise NotFound(f"no AtomaDb {db_id}")
    return parse_db(db_id, obj.object_type, int(obj.version or 0), _json(obj))


async def _read_field(client: Any, table: TableRef, key: int) -> Any | None:
    """The ``value`` JSON of entry ``key`` (a small id or a u64 index) of ``table``, or None if absent."""
    field_id = table.field_id(u64_bcs(key))
    obj = await _get_object(client, field_id)
    if obj is None:
        return None
    return _field_value(obj, field_id, _key_json(table, key))


def _key_json(table: TableRef, key: int) -> Any:
    """The ``name`` a node renders for ``key``: ``{"inner": "7"}`` for a small id, ``"7"`` for u64, and one more
    ``{"name": …}`` around it in an ObjectTable (the Wrapper)."""
    name: Any = str(key) if table.key_type == "u64" else {"inner": str(key)}
    return {"name": name} if table.is_object_table else name


async def read_node(client: Any, nodes: TableRef, node_small_id: int) -> Node | None:
    """``nodes[node_small_id]`` (``tables.nodes``), or None when there is no such node (never registered, or
    destroyed)."""
    value = await _read_field(client, nodes, node_small_id)
    return None if value is None else parse_node(node_small_id, value)


async def read_stack(client: Any, stacks: TableRef, stack_small_id: int) -> Stack | None:
    """``stacks[stack_small_id]`` (``tables.stacks``), or None (never bought, or claimed and removed)."""
    value = await _read_field(client, stacks, stack_small_id)
    return None if value is None else parse_stack(stack_small_id, value)


async def _read_child(client: Any, table: TableRef, key: int) -> dict | None:
    """The ``json`` of the object stored under ``key`` in an ObjectTable (two reads: the field, then the child)."""
    child_id = await _read_field(client, table, key)
    if child_id is None:
        return None
    child_id = _id(child_id, "Field.value")
    child = await _get_object(client, child_id)
    if child is None:
        raise UnexpectedObject(f"{table.value_type} {child_id} under key {key} of {table.id} is missing")
    data = _json(child)
    if data.get("id") != child_id:
        raise UnexpectedObject(f"object {child_id} carries id {data.get('id')!r}")
    return data


async def read_ticket(client: Any, tickets: TableRef, stack_small_id: int) -> Ticket | None:
    """``stack_settlement_tickets[stack_small_id]`` (``tables.stack_settlement_tickets``), or None."""
    data = await _read_child(client, tickets, stack_small_id)
    return None if data is None else parse_ticket(stack_small_id, data)


async def read_task_object(client: Any, tasks: TableRef, task_small_id: int) -> TaskObject | None:
    """``tasks[task_small_id]`` (``tables.tasks``) with its ``subscribed_nodes_small_ids`` TableVec read in order,
    or None (never created, or removed)."""
    data = await _read_child(client, tasks, task_small_id)
    if data is None:
        return None
    package_id = tasks.key_type.split("::", 1)[0]
    shell = parse_task_object(task_small_id, data, package_id)
    vec = shell.subscribed_nodes_small_ids
    ids = [vec.field_id(u64_bcs(i)) for i in range(vec.size)]
    ordered: list[int] = []
    for i, (field_id, obj) in enumerate(zip(ids, await _get_objects(client, ids))):
        if obj is None:
            raise UnexpectedObject(f"TableVec {vec.id} of task {task_small_id} has size {vec.size} but no entry {i}")
        ordered.append(_wrapped(_field_value(obj, field_id, str(i)), f"TableVec[{i}]"))
    return parse_task_object(task_small_id, data, package_id, ordered)


async def read_task(client: Any, tasks: TableRef, task_small_id: int) -> Task | None:
    """``tasks[task_small_id]`` as the port's :class:`Task`, or None."""
    found = await read_task_object(client, tasks, task_small_id)
    return None if found is None else found.task


async def read_subscriptions(client: Any, tasks: TableRef, task_small_id: int) -> list[Subscription]:
    """The task's ``subscribed_nodes`` table, sorted by node small id ([] for an unknown task).

    The table's keys come from the task's ``subscribed_nodes_small_ids`` TableVec, which holds every subscribed
    node (and, until the next purchase cleans them, nodes that unsubscribed: their entry is gone and they are
    skipped). Every full node serves this (no index is needed, unlike ``ListDynamicFields``).
    """
    found = await read_task_object(client, tasks, task_small_id)
    if found is None:
        return []
    nodes = sorted(set(found.task.subscribed_nodes_small_ids))
    table = found.subscribed_nodes
    ids = [table.field_id(small_id_bcs(n)) for n in nodes]
    out = []
    for node, field_id, obj in zip(nodes, ids, await _get_objects(client, ids)):
        if obj is not None:
            out.append(parse_price_data(task_small_id, node, _field_value(obj, field_id, {"inner": str(node)})))
    if len(out) != table.size:
        raise UnexpectedObject(
            f"task {task_small_id}: subscribed_nodes has {table.size} entries, {len(out)} found from its id list"
        )
    return out


async def list_dynamic_fields(client: Any, parent_id: str, *, page_size: int | None = None) -> list[DynamicFieldEntry]:
    """Every dynamic field of ``parent_id`` (a table's UID), through ``StateService/ListDynamicFields`` page by page.
    Full nodes serve this only with their index enabled; :func:`read_subscriptions` and the other reads do not
    need it."""
    rn = _requests()
    out: list[DynamicFieldEntry] = []
    token: bytes | None = None
    while True:
        request = rn.GetDynamicFields(
            object_id=parent_id, page_size=page_size, page_token=token,
            field_mask=["kind", "parent", "field_id", "name", "value_type", "child_id"],
        )
        result = await client.execute_grpc_request(request=request)
        if not result.is_ok():
            raise _failure(result, f"ListDynamicFields {parent_id}")
        page = result.result_data
        for f in page.dynamic_fields:
            out.append(
                DynamicFieldEntry(
                    field_id=f.field_id,
                    parent=f.parent,
                    kind="object" if f.kind is not None and f.kind.name == "OBJECT" else "field",
                    name_type=f.name.name if f.name is not None else "",
                    name_bcs=bytes(f.name.value) if f.name is not None and f.name.value is not None else b"",
                    value_type=f.value_type,
                    child_id=f.child_id,
                )
            )
        token = page.next_page_token
        if not token:
            return out
