"""The loopback node's view of AtomaDb's tables: localnet ``kv`` rows served as Sui dynamic field objects.

Part of the TEST DOUBLE (:mod:`.node`). A real full node stores every ``Table`` entry as an object
``0x2::dynamic_field::Field<K, V>`` whose id is derived from the table's UID and the key
(:func:`atoma_ops.chain.sui.tables.dynamic_field_id`); the localnet keeps the same entries as JSON rows of its
``kv`` table. This module renders them the way a Sui full node does, so the adapter's reads
(:mod:`atoma_ops.chain.sui.tables`) can be checked against the localnet's own:

* **AtomaDb** (``GetObject`` of the db id): ``json`` holds the scalar fields and, for each table,
  ``{"id": <table UID>, "size": "<n>"}``; ``contents`` is the BCS of the whole struct.
* **Table entries** (``GetObject``/``BatchGetObjects`` of a derived id): type ``0x2::dynamic_field::Field<K,V>``,
  owner ``OBJECT`` (the table's UID), ``json`` ``{"id", "name": <key>, "value": <entry>}``, ``contents``
  ``id ‖ bcs(key) ‖ bcs(value)``. ``nodes`` and ``stacks`` hold their values inline. ``tasks`` and
  ``stack_settlement_tickets`` are ObjectTables: the field's key is ``Wrapper<K>`` and its value the child
  object's id; the child (the ``Task`` with id ``task_id``, the ``StackSettlementTicket`` with id ``ticket_id``) is
  an object owned by the field. Each task has its own ``subscribed_nodes`` table and a ``subscribed_nodes_small_ids``
  TableVec (``Field<u64, NodeSmallId>`` per index). A NodeBadge's task subscriptions are ``Field<TaskSmallId,
  bool>`` on the badge's UID.
* **StateService/ListDynamicFields** for any of those parents, ordered by field id and paged.

Choices where the localnet has no counterpart:

* Table UIDs (which Sui would mint at creation) are ``blake2b-256("atoma-ops/loopback/uid" ‖ parent id ‖ field
  name)``: the db's tables from the db id, a task's two tables from its ``task_id``.
* The localnet has no per-row versions: every entry reports AtomaDb's current version (each ``atoma::db`` call
  bumps it; a real entry's version is that of the last transaction that changed it, never above the db's).
* A deleted entry (a claimed stack and its ticket, a removed task, an unsubscribed node) is NOT_FOUND, as on Sui.
* JSON follows ``sui_types::proto_value`` (see :mod:`atoma_ops.chain.sui.tables`): u64 as decimal strings,
  u8/u16 as numbers, ``vector<u8>`` as base64, ``Option`` as null or the value, UID/ID/Balance flattened.

Lookups invert the id derivation by indexing every current row's derived ids (rescanned when an id is unknown),
which is fine for the table sizes a test double holds.
"""

from __future__ import annotations

from typing import Any, Callable

import grpclib.const
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui
from grpclib.exceptions import GRPCError

from atoma_ops.chain._json import loads
from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.chain.sui.movetypes import address_bytes
from atoma_ops.chain.sui.tables import (
    ID_TYPE,
    dynamic_field_id,
    dynamic_object_field_key_type,
    field_type,
    u64_bcs,
)
from atoma_ops.wallet import normalize_address

from .entries import (
    bool_bcs,
    bytes_vec_bcs,
    node_bcs,
    node_json,
    opt_bcs,
    opt_u64_json,
    price_bcs,
    price_json,
    small_id_json,
    stack_bcs,
    stack_json,
    table_uid,
    ticket_bcs,
    ticket_json,
    u16_bcs,
    vec_bcs,
)

__all__ = ["LoopbackTables", "page_request"]

DB_TABLES = ("nodes", "models", "tasks", "stacks", "stack_settlement_tickets")
# AtomaDb tables the localnet keeps as kv rows under the same name (``models`` is always empty there).
_KV_TABLES = frozenset({"nodes", "tasks", "stacks", "stack_settlement_tickets"})
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_TOKEN_TAG = b"\x02"


def page_request(request: Any, tag: bytes) -> tuple[int, str]:
    """A list request's page size (default 50, at most 1000) and the object id its ``page_token`` resumes after
    ("" for the first page). Tokens are ``tag`` (one byte per list kind) + the last id's 32 bytes."""
    size = DEFAULT_PAGE_SIZE if not request.page_size else min(int(request.page_size), MAX_PAGE_SIZE)
    if not request.page_token:
        return size, ""
    token = bytes(request.page_token)
    if len(token) != 33 or token[:1] != tag:
        raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "invalid page_token")
    return size, "0x" + token[1:].hex()
_FIELDS_DEFAULT = frozenset({"parent", "field_id"})


class LoopbackTables:
    """AtomaDb's tables of one localnet, as Sui objects. ``row(id)`` returns rows in :mod:`.node`'s shape
    (``id``, ``type``, ``owner``, ``owner_kind``, ``version``, ``data``, ``json``, ``contents``)."""

    def __init__(self, localnet: Localnet):
        self.net = localnet
        self.db_id = normalize_address(localnet.db_id)
        pkg = localnet.package_id
        self.pkg = pkg
        self.node_sid = f"{pkg}::db::NodeSmallId"
        self.task_sid = f"{pkg}::db::TaskSmallId"
        self.stack_sid = f"{pkg}::db::StackSmallId"
        self.uids = {name: table_uid(self.db_id, name) for name in DB_TABLES + ("tickets",)}
        self._db_tables = {uid: name for name, uid in self.uids.items()}
        self._index: dict[str, tuple] = {}
        self._parents: dict[str, tuple] = {}  # a task's / badge's table UID -> ("subs"|"tvec", task) / ("badge", id)
        self._seen: set[tuple] = set()

    # -- kv access
    def _kv(self, tbl: str, key: str) -> dict | None:
        row = self.net.conn.execute("SELECT value FROM kv WHERE tbl = ? AND key = ?", (tbl, key)).fetchone()
        return None if row is None else loads(row[0])

    def _count(self, tbl: str, prefix: str | None = None) -> int:
        if prefix is None:
            sql, args = "SELECT COUNT(*) FROM kv WHERE tbl = ?", (tbl,)
        else:
            sql, args = "SELECT COUNT(*) FROM kv WHERE tbl = ? AND key LIKE ?", (tbl, f"{prefix}:%")
        return int(self.net.conn.execute(sql, args).fetchone()[0])

    def _db_version(self) -> int:
        return int(self.net.conn.execute("SELECT version FROM objects WHERE id = ?", (self.db_id,)).fetchone()[0])

    # -- ids
    def _table_field_id(self, table: str, key: int) -> str:
        key_type = {"nodes": self.node_sid, "stacks": self.stack_sid}[table]
        return dynamic_field_id(self.uids[table], key_type, u64_bcs(key))

    def _object_field_id(self, table: str, key: int) -> str:
        key_type = {"tasks": self.task_sid, "stack_settlement_tickets": self.stack_sid}[table]
        return dynamic_field_id(self.uids[table], dynamic_object_field_key_type(key_type), u64_bcs(key))

    def _scan(self) -> None:
        """Index the derived ids of every current row (rows seen before are skipped)."""
        rows = self.net.conn.execute(
            "SELECT tbl, key FROM kv WHERE tbl IN ('nodes', 'stacks', 'tasks', 'stack_settlement_tickets', "
            "'subscribed_nodes', 'badge_task_fields')"
        ).fetchall()
        for tbl, key in rows:
            if tbl == "tasks":
                self._index_task(int(key))
                continue
            if (tbl, key) in self._seen:
                continue
            if tbl in ("nodes", "stacks"):
                self._index[self._table_field_id(tbl, int(key))] = (tbl, int(key))
            elif tbl == "stack_settlement_tickets":
                d = self._kv(tbl, key)
                self._index[self._object_field_id(tbl, int(key))] = ("ticket_field", int(key))
                self._index[normalize_address(d["ticket_id"])] = ("ticket", int(key))
            elif tbl == "subscribed_nodes":
                task, node = (int(x) for x in key.split(":"))
                t = self._kv("tasks", str(task))
                if t is None:
                    continue
                uid = table_uid(t["task_id"], "subscribed_nodes")
                self._index[dynamic_field_id(uid, self.node_sid, u64_bcs(node))] = ("sub", task, node)
            elif tbl == "badge_task_fields":
                badge, task = key.rsplit(":", 1)
                badge = normalize_address(badge)
                self._parents[badge] = ("badge", badge)
                self._index[dynamic_field_id(badge, self.task_sid, u64_bcs(int(task)))] = ("badge", badge, int(task))
            self._seen.add((tbl, key))

    def _index_task(self, task: int) -> None:
        d = self._kv("tasks", str(task))
        if d is None:
            return
        task_id = normalize_address(d["task_id"])
        if ("tasks", str(task)) not in self._seen:
            self._index[self._object_field_id("tasks", task)] = ("task_field", task)
            self._index[task_id] = ("task", task)
            self._parents[table_uid(task_id, "subscribed_nodes")] = ("subs", task)
            self._parents[table_uid(task_id, "subscribed_nodes_small_ids")] = ("tvec", task)
            self._seen.add(("tasks", str(task)))
        vec_uid = table_uid(task_id, "subscribed_nodes_small_ids")
        for i in range(len(d["subscribed_nodes_small_ids"])):
            if ("tvec", task, i) not in self._seen:
                self._index[dynamic_field_id(vec_uid, "u64", u64_bcs(i))] = ("tvec", task, i)
                self._seen.add(("tvec", task, i))

    def _locate(self, object_id: str) -> tuple | None:
        loc = self._index.get(object_id)
        if loc is None:
            self._scan()
            loc = self._index.get(object_id)
        return loc

    # -- AtomaDb
    def db_json(self, data: dict) -> dict:
        def table(name: str) -> dict:
            size = self._count(name) if name in _KV_TABLES else 0
            return {"id": self.uids[name], "size": str(size)}

        out: dict[str, Any] = {
            "id": self.db_id,
            "tickets": self.uids["tickets"],
            "next_node_small_id": small_id_json(data["next_node_small_id"]),
            "next_task_small_id": small_id_json(data["next_task_small_id"]),
            "next_stack_small_id": small_id_json(data["next_stack_small_id"]),
        }
        for name in DB_TABLES:
            out[name] = table(name)
        out["fee_treasury"] = str(data["fee_treasury"])
        out["communal_treasury"] = str(data["communal_treasury"])
        for name in (
            "cross_validation_probability_permille", "cross_validation_extra_nodes_count",
            "sampling_consensus_charge_permille", "cross_validation_extra_nodes_charge_permille",
            "key_rotation_counter", "nonce",
        ):
            out[name] = str(data[name])
        out["is_registration_disabled"] = bool(data["is_registration_disabled"])
        for name in (
            "registration_collateral_in_protocol_token", "permille_to_slash_node_on_timeout",
            "permille_for_oracle_on_dispute", "permille_for_honest_nodes_on_dispute",
        ):
            out[name] = str(data[name])
        return out

    def db_contents(self, data: dict) -> bytes:
        """BCS of ``AtomaDb`` in field order (atoma-protocol.md §2.3)."""
        j = self.db_json(data)
        out = address_bytes(self.db_id) + address_bytes(j["tickets"])
        for name in ("next_node_small_id", "next_task_small_id", "next_stack_small_id"):
            out += u64_bcs(data[name])
        for name in DB_TABLES:
            out += address_bytes(j[name]["id"]) + u64_bcs(int(j[name]["size"]))
        for name in (
            "fee_treasury", "communal_treasury", "cross_validation_probability_permille",
            "cross_validation_extra_nodes_count", "sampling_consensus_charge_permille",
            "cross_validation_extra_nodes_charge_permille", "key_rotation_counter", "nonce",
        ):
            out += u64_bcs(data[name])
        out += bool_bcs(data["is_registration_disabled"])
        for name in (
            "registration_collateral_in_protocol_token", "permille_to_slash_node_on_timeout",
            "permille_for_oracle_on_dispute", "permille_for_honest_nodes_on_dispute",
        ):
            out += u64_bcs(data[name])
        return out

    # -- tasks
    def _task_json(self, task: int, d: dict) -> dict:
        task_id = normalize_address(d["task_id"])
        return {
            "id": task_id,
            "role": {"inner": int(d["role"])},
            "model_name": d["model_name"],
            "is_deprecated": bool(d["is_deprecated"]),
            "deprecated_at_epoch": opt_u64_json(d["deprecated_at_epoch"]),
            "security_level": {"inner": int(d["security_level"])},
            "subscribed_nodes": {
                "id": table_uid(task_id, "subscribed_nodes"), "size": str(self._count("subscribed_nodes", str(task))),
            },
            "subscribed_nodes_small_ids": {
                "contents": {
                    "id": table_uid(task_id, "subscribed_nodes_small_ids"),
                    "size": str(len(d["subscribed_nodes_small_ids"])),
                },
            },
            "minimum_reputation_score": {"inner": int(d["minimum_reputation_score"])},
            "is_public": bool(d["is_public"]),
            "whitelisted_nodes": [small_id_json(n) for n in d["whitelisted_nodes"]],
        }

    def _task_bcs(self, j: dict) -> bytes:
        name = j["model_name"]
        return (
            address_bytes(j["id"])
            + u16_bcs(j["role"]["inner"])
            + opt_bcs(name, lambda s: bytes_vec_bcs(s.encode("ascii")))
            + bool_bcs(j["is_deprecated"])
            + opt_bcs(j["deprecated_at_epoch"], lambda s: u64_bcs(int(s)))
            + u16_bcs(j["security_level"]["inner"])
            + address_bytes(j["subscribed_nodes"]["id"]) + u64_bcs(int(j["subscribed_nodes"]["size"]))
            + address_bytes(j["subscribed_nodes_small_ids"]["contents"]["id"])
            + u64_bcs(int(j["subscribed_nodes_small_ids"]["contents"]["size"]))
            + bytes([j["minimum_reputation_score"]["inner"]])
            + bool_bcs(j["is_public"])
            + vec_bcs([int(n["inner"]) for n in j["whitelisted_nodes"]], u64_bcs)
        )

    # -- rendering
    def _field_row(self, fid: str, parent: str, key_type: str, value_type: str, name: Any, value: Any,
                   contents: bytes, version: int) -> dict:
        return {
            "id": fid,
            "type": field_type(key_type, value_type),
            "owner": parent,
            "owner_kind": "object",
            "version": version,
            "data": {},
            "json": {"id": fid, "name": name, "value": value},
            "contents": address_bytes(fid) + contents,
        }

    def _render(self, object_id: str, loc: tuple) -> dict | None:
        kind = loc[0]
        version = self._db_version()
        pkg = self.pkg
        if kind in ("nodes", "stacks"):
            key = loc[1]
            d = self._kv(kind, str(key))
            if d is None:
                return None
            if kind == "nodes":
                return self._field_row(object_id, self.uids["nodes"], self.node_sid, f"{pkg}::db::NodeEntry",
                                       small_id_json(key), node_json(d), u64_bcs(key) + node_bcs(d), version)
            return self._field_row(object_id, self.uids["stacks"], self.stack_sid, f"{pkg}::db::Stack",
                                   small_id_json(key), stack_json(d), u64_bcs(key) + stack_bcs(d), version)
        if kind in ("task_field", "task"):
            key = loc[1]
            d = self._kv("tasks", str(key))
            if d is None:
                return None
            task_id = normalize_address(d["task_id"])
            fid = self._object_field_id("tasks", key)
            if kind == "task_field":
                return self._field_row(fid, self.uids["tasks"], dynamic_object_field_key_type(self.task_sid), ID_TYPE,
                                       {"name": small_id_json(key)}, task_id, u64_bcs(key) + address_bytes(task_id), version)
            j = self._task_json(key, d)
            return {"id": task_id, "type": f"{pkg}::db::Task", "owner": fid, "owner_kind": "object",
                    "version": version, "data": {}, "json": j, "contents": self._task_bcs(j)}
        if kind in ("ticket_field", "ticket"):
            key = loc[1]
            d = self._kv("stack_settlement_tickets", str(key))
            if d is None:
                return None
            ticket_id = normalize_address(d["ticket_id"])
            fid = self._object_field_id("stack_settlement_tickets", key)
            if kind == "ticket_field":
                return self._field_row(fid, self.uids["stack_settlement_tickets"],
                                       dynamic_object_field_key_type(self.stack_sid), ID_TYPE,
                                       {"name": small_id_json(key)}, ticket_id, u64_bcs(key) + address_bytes(ticket_id), version)
            return {"id": ticket_id, "type": f"{pkg}::db::StackSettlementTicket", "owner": fid,
                    "owner_kind": "object", "version": version, "data": {},
                    "json": ticket_json(key, d), "contents": ticket_bcs(key, d)}
        if kind == "sub":
            _, task, node = loc
            t = self._kv("tasks", str(task))
            d = self._kv("subscribed_nodes", f"{task}:{node}")
            if t is None or d is None:
                return None
            uid = table_uid(t["task_id"], "subscribed_nodes")
            return self._field_row(object_id, uid, self.node_sid, f"{pkg}::db::NodePriceData", small_id_json(node),
                                   price_json(d), u64_bcs(node) + price_bcs(d), version)
        if kind == "tvec":
            _, task, i = loc
            t = self._kv("tasks", str(task))
            if t is None or i >= len(t["subscribed_nodes_small_ids"]):
                return None
            node = t["subscribed_nodes_small_ids"][i]
            uid = table_uid(t["task_id"], "subscribed_nodes_small_ids")
            return self._field_row(object_id, uid, "u64", self.node_sid, str(i), small_id_json(node),
                                   u64_bcs(i) + u64_bcs(node), version)
        if kind == "badge":
            _, badge, task = loc
            d = self._kv("badge_task_fields", f"{badge}:{task}")
            if d is None:
                return None
            return self._field_row(object_id, badge, self.task_sid, "bool", small_id_json(task), bool(d["value"]),
                                   u64_bcs(task) + bool_bcs(d["value"]), version)
        raise AssertionError(f"unknown locator {loc!r}")

    def row(self, object_id: str) -> dict | None:
        """A table entry or ObjectTable child by id, or None (unknown, or deleted since)."""
        loc = self._locate(object_id)
        return None if loc is None else self._render(object_id, loc)

    # -- listing
    def _children(self, parent: str) -> list[tuple[str, tuple]]:
        """(field id, locator) of every current dynamic field of ``parent``."""
        self._scan()
        table = self._db_tables.get(parent)
        conn = self.net.conn
        if table in ("nodes", "stacks"):
            keys = [int(r[0]) for r in conn.execute("SELECT key FROM kv WHERE tbl = ?", (table,))]
            return [(self._table_field_id(table, k), (table, k)) for k in keys]
        if table in ("tasks", "stack_settlement_tickets"):
            keys = [int(r[0]) for r in conn.execute("SELECT key FROM kv WHERE tbl = ?", (table,))]
            kind = "task_field" if table == "tasks" else "ticket_field"
            return [(self._object_field_id(table, k), (kind, k)) for k in keys]
        if table is not None:
            return []  # models, legacy tickets: empty on the localnet
        owner = self._parents.get(parent)
        if owner is None:
            return []
        if owner[0] == "subs":
            task = owner[1]
            nodes = [int(r[0].split(":")[1]) for r in conn.execute(
                "SELECT key FROM kv WHERE tbl = 'subscribed_nodes' AND key LIKE ?", (f"{task}:%",))]
            return [(dynamic_field_id(parent, self.node_sid, u64_bcs(n)), ("sub", task, n)) for n in nodes]
        if owner[0] == "tvec":
            task = owner[1]
            t = self._kv("tasks", str(task))
            n = 0 if t is None else len(t["subscribed_nodes_small_ids"])
            return [(dynamic_field_id(parent, "u64", u64_bcs(i)), ("tvec", task, i)) for i in range(n)]
        badge = owner[1]
        tasks = [int(r[0].rsplit(":", 1)[1]) for r in conn.execute(
            "SELECT key FROM kv WHERE tbl = 'badge_task_fields' AND key LIKE ?", (f"{badge}:%",))]
        return [(dynamic_field_id(badge, self.task_sid, u64_bcs(t)), ("badge", badge, t)) for t in tasks]

    def list_dynamic_fields(
        self, request: sui.ListDynamicFieldsRequest, object_message: Callable[[dict, frozenset[str] | None], sui.Object]
    ) -> sui.ListDynamicFieldsResponse:
        """``StateService/ListDynamicFields``: fields ordered by id, ``page_size`` (default 50, at most 1000) at a
        time; ``object_message(row, mask)`` renders ``field_object``/``child_object``."""
        if not request.parent:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "missing parent")
        try:
            parent = normalize_address(request.parent)
        except ValueError:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"invalid parent: {request.parent!r}") from None
        size, after = page_request(request, _TOKEN_TAG)
        paths = list(getattr(request.read_mask, "paths", None) or [])
        top = {p.split(".", 1)[0] for p in paths} if paths else set(_FIELDS_DEFAULT)
        every = "*" in top

        def want(name: str) -> bool:
            return every or name in top

        entries = sorted((fid, loc) for fid, loc in self._children(parent) if fid > after)
        page, more = entries[:size], len(entries) > size
        out = []
        for fid, loc in page:
            row = self._render(fid, loc)
            if row is None:  # pragma: no cover - rows are read in one thread, between transactions
                continue
            is_object = loc[0] in ("task_field", "ticket_field")
            key_type = row["type"][len("0x2::dynamic_field::Field<"):].split(",", 1)[0]
            name_type = key_type[len("0x2::dynamic_object_field::Wrapper<"):-1] if is_object else key_type
            key_bcs = row["contents"][32:40]
            value_bcs = row["contents"][40:]
            child = self._render(row["json"]["value"], ("task" if loc[0] == "task_field" else "ticket", loc[1])) \
                if is_object else None
            value_type = child["type"] if child is not None else row["type"][:-1].split(",", 1)[1]
            field = sui.DynamicField()
            if want("kind"):
                kinds = sui.DynamicFieldDynamicFieldKind
                field.kind = kinds.OBJECT if is_object else kinds.FIELD
            if want("parent"):
                field.parent = parent
            if want("field_id"):
                field.field_id = fid
            if want("name"):
                field.name = sui.Bcs(name=name_type, value=key_bcs)
            if want("value"):
                field.value = sui.Bcs(name=ID_TYPE if is_object else value_type, value=value_bcs)
            if want("value_type"):
                field.value_type = value_type
            if is_object and want("child_id"):
                field.child_id = child["id"]
            if want("field_object"):
                field.field_object = object_message(row, None)
            if is_object and want("child_object"):
                field.child_object = object_message(child, None)
            out.append(field)
        token_out = _TOKEN_TAG + bytes.fromhex(page[-1][0][2:]) if more else None
        return sui.ListDynamicFieldsResponse(dynamic_fields=out, next_page_token=token_out)
