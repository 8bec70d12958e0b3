"""Reading AtomaDb's tables from a Sui full node through pysui's gRPC client: the db object, then each entry at
its derived dynamic field id (batched, at most ``BATCH_LIMIT`` objects a request), parsed by :mod:`.tables`. The
request classes are pysui's, imported on first use (they load pysui's client stack)."""

from __future__ import annotations

from typing import Any

from ..errors import ChainError, NotFound
from ..types import DbConfig, Node, Stack, Subscription, Task, Ticket
from .movetypes import address_bytes
from .tables import (
    _NOT_FOUND,
    _OBJECT_FIELDS,
    BATCH_LIMIT,
    AtomaTables,
    DynamicFieldEntry,
    TableRef,
    TaskObject,
    UnexpectedObject,
    _field,
    _id,
    _wrapped,
    parse_db,
    parse_node,
    parse_price_data,
    parse_stack,
    parse_task_object,
    parse_ticket,
    small_id_bcs,
    u64_bcs,
)


def _json(obj: Any) -> Any:
    if obj is None or getattr(obj, "json", None) is None:
        raise UnexpectedObject(f"object {getattr(obj, 'object_id', '?')} came without json")
    return obj.json.to_dict()


def _field_value(obj: Any, field_id: str, expected_name: Any) -> Any:
    """The ``value`` of a dynamic field object's ``json``, after checking its id and name."""
    data = _json(obj)
    if _field(data, "id", "Field") != field_id:
        raise UnexpectedObject(f"dynamic field {field_id} carries id {data.get('id')!r}")
    if _field(data, "name", "Field") != expected_name:
        raise UnexpectedObject(f"dynamic field {field_id} has name {data.get('name')!r}, expected {expected_name!r}")
    return _field(data, "value", "Field")


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
