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

The layout, the ids and the parsing of each entry's JSON are here; the reads above are in
:mod:`.table_reads`, which imports pysui's request classes on first use (this module imports neither pysui nor
grpclib).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ...protocol.constants import U64_MAX
from ..errors import ChainError
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
    "parse_db",
    "parse_node",
    "parse_price_data",
    "parse_stack",
    "parse_task_object",
    "parse_ticket",
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
