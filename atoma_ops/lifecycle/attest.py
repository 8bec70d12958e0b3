"""Stage 7, attest: as a requested attestation node, find the serving node's history, replay it, and submit the
replayed commitment; which tickets ask this node to attest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..home import node_store_paths
from ..journal import (
    FINISHED,
    Intent,
    JournalStore,
    execute_intent,
)
from ..protocol.commitments import commit
from ..serving.history import StackHistory, import_jsonl, parse_jsonl
from ..serving.node import NodeService
from ..serving.replay import ReplayReport, replay
from ..serving.store import NodeStore
from .common import StageError


@dataclass
class Attested:
    """What became of this node's attestation (JSON-serialisable: a Prefect task result). ``replay`` is the replay
    report's JSON; ``history_matches_ticket`` whether the history replayed is the one the ticket committed to
    (known when the caller had the history, None otherwise)."""

    stack_small_id: int
    status: str
    position: int
    replay: dict
    digest: str | None
    disputed: bool
    completed: bool
    committed_stack_proof: str | None = None
    stack_merkle_leaf: str | None = None
    history_matches_ticket: bool | None = None


def find_history(stack_small_id: int, *, home: str | Path | None = None, history_dir: str | Path | None = None) -> StackHistory:
    """The serving node's history of a stack: an export ``<history_dir>/stack-<id>.jsonl``, or the store of the node
    that served it under ``<home>/nodes/``."""
    if history_dir is not None:
        path = Path(history_dir) / f"stack-{stack_small_id}.jsonl"
        if path.exists():
            return import_jsonl(path, expect_stack=stack_small_id)
    if home is not None:
        for db in node_store_paths(home):
            with NodeStore(db) as store:
                if store.usage(stack_small_id) is not None:
                    history = store.history(stack_small_id)
                    if history.entries:
                        return history.verify()
    raise StageError(
        f"no history of stack {stack_small_id} found (looked in {history_dir or '-'} and the node stores under "
        f"{home or '-'}): ask the serving node for its export (`atoma-ops stack history --export`)"
    )


async def fetch_history(stack_small_id: int, node_url: str, reader: Any) -> StackHistory:
    """The serving node's history of a stack read over HTTP (``GET /v1/stacks/{id}/history`` on the serving node,
    signed by ``reader``: the attesting node's service, or any signer the serving node lets read it), verified
    like an export file (every hash, the indexes, the root and the units in the header)."""
    from ..client.node_data import NodeDataClient, NodeDataError

    try:
        async with NodeDataClient(node_url, reader) as node:
            lines = await node.history_lines(stack_small_id)
    except NodeDataError as exc:
        raise StageError(f"the history of stack {stack_small_id} cannot be read from {node_url}: {exc}") from None
    return parse_jsonl(lines, f"{node_url.rstrip('/')}/v1/stacks/{stack_small_id}/history",
                       expect_stack=stack_small_id).verify()


async def attestation_position(service: NodeService, stack_small_id: int, ticket: Any = None) -> int:
    """This node's position among the stack's requested attestation nodes (1-based: leaf slot), or a StageError.
    ``ticket``: the stack's ticket if the caller has just read it."""
    ticket = ticket or await service.chain.get_ticket(stack_small_id)
    if ticket is None:
        raise StageError(f"stack {stack_small_id} has no settlement ticket: nothing to attest")
    if service.node_small_id not in ticket.requested_attestation_nodes:
        raise StageError(
            f"node {service.node_small_id} is not among stack {stack_small_id}'s requested attestation nodes "
            f"{ticket.requested_attestation_nodes}"
        )
    return ticket.requested_attestation_nodes.index(service.node_small_id) + 1


def replay_history(engine: Any, history: StackHistory, *, batch_size: int = 16) -> ReplayReport:
    """Re-run a stack's history through ``engine`` (blocking: run it in a worker thread)."""
    if not history.entries:
        raise StageError(f"the history of stack {history.stack_small_id} is empty: nothing to replay")
    return replay(history, engine, batch_size=batch_size)


async def attest_stack(
    service: NodeService, journal: JournalStore, stack_small_id: int, history: StackHistory, *, batch_size: int = 16
) -> Attested:
    """Replay ``history`` (the serving node's export) through this node's engine and submit the replayed commitment
    (the CLI's ``stack attest``; the flow replays and submits in two tasks, :func:`replay_history` and
    :func:`submit_attestation`). Checks before the replay that this node is asked to attest."""
    if history.stack_small_id != stack_small_id:
        raise StageError(f"the history is of stack {history.stack_small_id}, not stack {stack_small_id}")
    if service.engine is None:
        raise StageError("attesting replays the history: this node has no engine")
    ticket = await service.chain.get_ticket(stack_small_id)
    position = await attestation_position(service, stack_small_id, ticket)
    report = await asyncio.to_thread(replay_history, service.engine, history, batch_size=batch_size)
    extra = (await service.chain.db_config()).cross_validation_extra_nodes_count
    attested = await submit_attestation(
        service, journal, stack_small_id, report.replayed_leaves, report.to_json(), position=position, extra=extra
    )
    attested.history_matches_ticket = commit(history.leaves, extra, 0).committed_stack_proof == ticket.committed_stack_proof
    return attested


async def submit_attestation(
    service: NodeService, journal: JournalStore, stack_small_id: int, replayed_leaves: Sequence[bytes],
    replay_doc: dict | None = None, *, position: int | None = None, extra: int | None = None,
) -> Attested:
    """Submit this node's attestation for the replayed leaves (once: a node already counted is done). ``position``
    and ``extra`` (the extra attestation nodes count): what the caller has just read, else read here."""
    chain = service.chain
    key = f"submit_stack_settlement_attestation:{stack_small_id}:{service.node_small_id}"
    earlier = (await asyncio.to_thread(journal.actions, [key])).get(key)
    if earlier is not None and earlier["status"] in FINISHED:  # attested by an earlier run (the ticket may be gone)
        ticket = await chain.get_ticket(stack_small_id)
        return Attested(
            stack_small_id, earlier["status"], 0, replay_doc or {}, earlier["digest"],
            disputed=bool(ticket and ticket.is_in_dispute), completed=True,
        )
    if position is None:
        position = await attestation_position(service, stack_small_id)
    if extra is None:
        extra = (await chain.db_config()).cross_validation_extra_nodes_count
    mine = commit(list(replayed_leaves), extra, position)

    async def attested() -> bool:
        t = await chain.get_ticket(stack_small_id)
        return t is None or service.node_small_id in t.already_attested_nodes or t.is_in_dispute

    result = await execute_intent(
        chain,
        journal,
        Intent(
            key,
            "submit_stack_settlement_attestation",
            service.address,
            {
                "stack_small_id": stack_small_id,
                "committed_stack_proof": mine.committed_stack_proof,
                "stack_merkle_leaf": mine.stack_merkle_leaf,
                "node_small_id": service.node_small_id,
            },
            done=attested,
            stack_small_ids=(stack_small_id,),
        ),
    )
    after = await chain.get_ticket(stack_small_id)
    names = {e.name for e in result.tx.events} if result.tx is not None else set()
    return Attested(
        stack_small_id,
        result.status,
        position,
        replay_doc or {},
        result.digest,
        disputed="StackAttestationDisputeEvent" in names or bool(after and after.is_in_dispute),
        completed="StackSettlementTicketEvent" in names
        or bool(after and len(after.already_attested_nodes) >= len(after.requested_attestation_nodes)),
        committed_stack_proof="0x" + mine.committed_stack_proof.hex(),
        stack_merkle_leaf="0x" + mine.stack_merkle_leaf.hex(),
    )


def attestation_requests(ledger: Any, node_small_ids: Sequence[int], epoch: int) -> list[dict]:
    """Open tickets (synced into the ledger) that request one of ``node_small_ids`` to attest and that it has not
    attested yet: stack, node, and the last epoch an attestation is accepted."""
    if not node_small_ids:
        return []
    df = ledger.query(
        "SELECT t.stack_small_id, n.node AS node_small_id, t.dispute_settled_at_epoch AS last_epoch "
        "FROM stack_settlement_tickets t, (SELECT unnest($1::BIGINT[]) AS node) n "
        "WHERE list_contains(t.requested_attestation_nodes, n.node) "
        "AND NOT list_contains(t.already_attested_nodes, n.node) "
        "AND NOT t.is_in_dispute AND NOT t.is_claimed ORDER BY t.stack_small_id, n.node",
        [list(node_small_ids)],
    )
    return [
        {**r, "window_open": r["last_epoch"] >= epoch}
        for r in ({k: int(v) for k, v in row.items()} for row in df.to_dict("records"))
    ]
