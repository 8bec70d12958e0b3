"""The serving node: meter, run and record chat requests on stacks; commit, try-settle and attest.

``NodeService`` ties together one node identity (an address and its NodeBadge small id), the Chain port (stack
facts, tickets, settlement and attestation calls), the node's durable store (usage, reservations, history) and an
inference engine. Serving a batch:

1. validate each request and compute its reservation (metering.estimate);
2. check each stack on chain: it exists, it was sold to this node, it is not claimed, it has no settlement ticket;
3. reserve every estimate against its stack in one store transaction (refusals charge nothing);
4. run the engine on the reserved requests (in a worker thread: engines block);
5. settle each to its actual usage and append it to the stack history, in serving order, in one store transaction,
   before any response is handed back; a failure releases every reservation of the batch.

The chain checks run before the reservation, so a ticket opened by *another* tool in between could let one more
request in; this node's own ``try_settle`` closes the stack in the store first (no new reservations) and refuses
while requests are in flight, so its commitment always covers everything it charged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..chain.errors import ChainError, InvalidArgument
from ..chain.port import Chain
from ..journal import failpoint
from ..protocol.commitments import Commitment, commit
from .engines import ENGINE_KINDS
from .engines.base import SMOLLM2_MODEL, Engine, EngineError
from .history import StackHistory
from .metering import (
    EngineFailure,
    Estimate,
    NotAttester,
    NothingToCommit,
    ServingError,
    StackClaimed,
    StackNotFound,
    StackNotServedHere,
    StackSettling,
    estimate,
    validate_request,
)
from .replay import ReplayReport, replay
from .store import NodeStore, Reservation, Settlement, StackFacts

log = logging.getLogger("atoma_ops.serving")



class StoreFailure(ServingError):
    status, type = 500, "history_write_failed"


@dataclass
class Outcome:
    """What became of one request of a batch: a response (charged and recorded) or an error (nothing charged)."""

    index: int
    stack_small_id: int | None
    request: Any
    estimate: Estimate | None = None
    response: dict | None = None
    error: ServingError | None = None
    units: int = 0
    history_index: int | None = None
    units_left: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        doc: dict = {"index": self.index, "stack_small_id": self.stack_small_id, "ok": self.ok}
        if self.estimate is not None:
            doc["estimate"] = self.estimate.to_json()
        if self.ok:
            usage = (self.response or {}).get("usage", {})
            choice = ((self.response or {}).get("choices") or [{}])[0]
            doc.update(
                units=self.units,
                history_index=self.history_index,
                units_left=self.units_left,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                finish_reason=choice.get("finish_reason"),
                content=(choice.get("message") or {}).get("content"),
            )
        else:
            doc["error"] = self.error.to_json()  # type: ignore[union-attr]
        return doc


@dataclass(frozen=True)
class CommitInfo:
    stack_small_id: int
    commitment: Commitment
    claimed_units: int
    num_requests: int
    extra_nodes_count: int

    def to_json(self) -> dict:
        c = self.commitment
        return {
            "stack_small_id": self.stack_small_id,
            "root": "0x" + c.root.hex(),
            "committed_stack_proof": "0x" + c.committed_stack_proof.hex(),
            "stack_merkle_leaf": "0x" + c.stack_merkle_leaf.hex(),
            "position": c.position,
            "num_requests": self.num_requests,
            "num_claimed_compute_units": self.claimed_units,
            "cross_validation_extra_nodes_count": self.extra_nodes_count,
        }


@dataclass
class SettleResult:
    info: CommitInfo
    tx: Any | None  # TxResult; None when the ticket already existed (idempotent re-run)
    requested_attestation_nodes: list[int] = field(default_factory=list)
    already_settled: bool = False

    def to_json(self) -> dict:
        return {
            **self.info.to_json(),
            "already_settled": self.already_settled,
            "requested_attestation_nodes": self.requested_attestation_nodes,
            "transaction": self.tx.to_json() if self.tx is not None else None,
        }


@dataclass
class AttestResult:
    report: ReplayReport
    commitment: Commitment
    position: int
    history_matches_ticket: bool
    tx: Any
    disputed: bool
    completed: bool

    def to_json(self) -> dict:
        c = self.commitment
        return {
            "stack_small_id": self.report.stack_small_id,
            "position": self.position,
            "replay": self.report.to_json(),
            "history_matches_ticket": self.history_matches_ticket,
            "committed_stack_proof": "0x" + c.committed_stack_proof.hex(),
            "stack_merkle_leaf": "0x" + c.stack_merkle_leaf.hex(),
            "disputed": self.disputed,
            "attestations_complete": self.completed,
            "transaction": self.tx.to_json(),
        }


# --------------------------------------------------------------------------------------------------- engines
def load_engine(kind: str = "cpu", *, model: str | None = None, base_url: str | None = None, **kwargs: Any) -> Engine:
    """Build an engine by kind (``engines.make_engine``): ``cpu`` (SmolLM2 on CPU torch), ``openai`` (an
    OpenAI-compatible server at ``base_url``) or ``vllm`` (vLLM in process). Heavy imports happen here, not at
    module import."""
    from .engines import make_engine

    if kind not in ENGINE_KINDS:
        raise InvalidArgument(f"unknown engine {kind!r} (one of {', '.join(ENGINE_KINDS)})")
    options: dict[str, Any] = {"model": model or SMOLLM2_MODEL, **kwargs}
    if kind == "openai":
        if not base_url:
            raise InvalidArgument("--engine openai needs --openai-base-url")
        options["base_url"] = base_url
    return make_engine(kind, **options)


# --------------------------------------------------------------------------------------------------- the node
async def node_badge_id(chain: Chain, address: str, node_small_id: int | None = None) -> int:
    """The small id of the address's NodeBadge (the one given, or its only one)."""
    ids = sorted(b.small_id for b in await chain.badges(address) if b.kind == "NodeBadge" and b.small_id is not None)
    if node_small_id is not None:
        if node_small_id not in ids:
            raise InvalidArgument(f"{address} owns no NodeBadge with small id {node_small_id}")
        return node_small_id
    if not ids:
        raise InvalidArgument(f"{address} owns no NodeBadge: register the node first (db register-node)")
    if len(ids) > 1:
        raise InvalidArgument(f"{address} owns several NodeBadges (small ids {ids}); say which with --node-small-id")
    return ids[0]


class NodeService:
    """One serving node. Async (the Chain port is); the engine and the store run in worker threads.

    Args:
        chain: the Chain port, acting through a wallet holding the node's key.
        store: the node's store.
        engine: the inference engine (may be None for commit / try-settle only).
        address: the node's address; ``node_small_id``: its NodeBadge's small id.
    """

    def __init__(
        self,
        chain: Chain,
        store: NodeStore,
        engine: Engine | None,
        *,
        address: str,
        node_small_id: int,
        alias: str | None = None,
        owns_chain: bool = False,
    ):
        self.chain = chain
        self.store = store
        self.engine = engine
        self.address = address
        self.node_small_id = node_small_id
        self.alias = alias
        self._owns_chain = owns_chain
        store.bind_node(node_small_id, address)

    @classmethod
    async def open(
        cls,
        home: str | os.PathLike,
        node: str,
        engine: Engine | None = None,
        *,
        node_small_id: int | None = None,
        chain: Chain | None = None,
        store_path: str | os.PathLike | None = None,
        **chain_kwargs: Any,
    ) -> "NodeService":
        """The node ``node`` (wallet alias or address) of the localnet home ``home``; its store is
        ``<home>/nodes/<alias>/serving.sqlite`` unless ``store_path`` is given. Stale reservations of dead processes
        are released."""
        from ..home import LocalnetHome

        owns = chain is None
        if chain is None:
            chain = LocalnetHome(Path(home)).open(**chain_kwargs)
        try:
            wallet = chain.wallet  # type: ignore[attr-defined]
            address = wallet.resolve(node)
            alias = wallet.alias_of(address) or address
            small_id = await node_badge_id(chain, address, node_small_id)
            store = NodeStore(store_path or NodeStore.path_for(home, alias))
            try:
                service = cls(chain, store, engine, address=address, node_small_id=small_id, alias=alias, owns_chain=owns)
            except Exception:
                store.close()
                raise
        except BaseException:
            if owns:
                await chain.close()
            raise
        released = store.recover()
        if released:
            log.warning("released %d reservation(s) left by dead processes", released)
        return service

    async def close(self) -> None:
        self.store.close()
        if self._owns_chain:
            await self.chain.close()

    # ------------------------------------------------------------------ checks
    async def check_stack(self, stack_small_id: int) -> StackFacts:
        """The stack's facts if this node may serve it now, else the refusal."""
        stack = await self.chain.get_stack(stack_small_id)
        if stack is None:
            if self.store.usage(stack_small_id) is not None:
                raise StackClaimed(
                    f"stack {stack_small_id} is gone from the chain (claimed); it takes no more requests",
                    stack_small_id=stack_small_id,
                )
            raise StackNotFound(f"stack {stack_small_id} does not exist", stack_small_id=stack_small_id)
        if stack.selected_node_id != self.node_small_id:
            raise StackNotServedHere(
                f"stack {stack_small_id} was sold to node {stack.selected_node_id}; this is node {self.node_small_id}",
                stack_small_id=stack_small_id,
                selected_node_id=stack.selected_node_id,
            )
        if stack.is_claimed:
            raise StackClaimed(
                f"stack {stack_small_id} has been claimed; it takes no more requests", stack_small_id=stack_small_id
            )
        ticket = await self.chain.get_ticket(stack_small_id)
        if ticket is not None:
            raise StackSettling(
                f"stack {stack_small_id} is in settlement ({ticket.num_claimed_compute_units} compute units claimed); "
                "it takes no more requests",
                stack_small_id=stack_small_id,
            )
        return StackFacts.of(stack)

    # ------------------------------------------------------------------ serving
    def _require_engine(self) -> Engine:
        if self.engine is None:
            raise EngineFailure("this node has no inference engine")
        return self.engine

    def _prepare(self, jobs: Sequence[tuple[int | None, Any]]) -> list[Outcome]:
        engine = self._require_engine()
        out = []
        for i, (stack, request) in enumerate(jobs):
            o = Outcome(i, stack, request)
            try:
                validate_request(request)
                o.estimate = estimate(request, engine)
            except ServingError as exc:
                o.error = exc
            out.append(o)
        return out

    async def serve(self, stack_small_id: int, requests: Sequence[dict]) -> list[Outcome]:
        """Serve a batch of chat requests on one stack. Outcomes come back in order; refused or failed requests
        carry their error and cost nothing."""
        return await self.serve_jobs([(stack_small_id, r) for r in requests])

    async def serve_one(self, stack_small_id: int, request: dict) -> Outcome:
        """Serve one request; raise its ServingError when refused."""
        (outcome,) = await self.serve_jobs([(stack_small_id, request)])
        if outcome.error is not None:
            raise outcome.error
        return outcome

    async def serve_jobs(self, jobs: Sequence[tuple[int | None, Any]]) -> list[Outcome]:
        """Serve ``(stack small id, request)`` pairs as one engine batch (stacks may differ)."""
        outcomes = await asyncio.to_thread(self._prepare, jobs)
        # chain checks, once per stack
        facts: dict[int, StackFacts | ServingError] = {}
        for o in outcomes:
            if o.ok and o.stack_small_id not in facts:
                try:
                    facts[o.stack_small_id] = await self.check_stack(o.stack_small_id)  # type: ignore[arg-type]
                except ServingError as exc:
                    facts[o.stack_small_id] = exc  # type: ignore[index]
        for o in outcomes:
            if o.ok and isinstance(facts[o.stack_small_id], ServingError):  # type: ignore[index]
                o.error = facts[o.stack_small_id]  # type: ignore[index,assignment]
        wanted = [o for o in outcomes if o.ok]
        if not wanted:
            return outcomes
        results = await asyncio.to_thread(
            self.store.reserve, [(facts[o.stack_small_id], o.estimate.reserved) for o in wanted]  # type: ignore[index,union-attr]
        )
        failpoint("serve:after-reserve")  # units reserved, nothing served: a crash must not leak them
        running: list[tuple[Outcome, Reservation]] = []
        for o, r in zip(wanted, results):
            if isinstance(r, Reservation):
                running.append((o, r))
            else:
                o.error = r  # type: ignore[assignment]
        if not running:
            return outcomes
        try:
            responses = await self._run_engine([o.request for o, _ in running])
        except BaseException:
            await asyncio.to_thread(self.store.release, [r for _, r in running])
            raise
        served = [(o, r, resp) for (o, r), resp in zip(running, responses) if isinstance(resp, dict)]
        failed = [(o, r, resp) for (o, r), resp in zip(running, responses) if not isinstance(resp, dict)]
        for o, _, err in failed:
            o.error = err
        if failed:
            await asyncio.to_thread(self.store.release, [r for _, r, _ in failed])
        failpoint("serve:after-engine")  # answers computed, not recorded: nothing charged, served again
        if served:
            try:
                settled = await asyncio.to_thread(
                    self.store.settle, [Settlement(r, o.request, resp) for o, r, resp in served]
                )
            except sqlite3.Error as exc:
                log.error("settling a batch failed, releasing it: %s", exc)
                await asyncio.to_thread(self.store.release, [r for _, r, _ in served])
                for o, _, _ in served:
                    o.error = StoreFailure(f"the request was not recorded ({exc}); nothing charged")
                return outcomes
            failpoint("serve:after-record")  # charged and in the history, not answered: not served again
            for (o, _, resp), s in zip(served, settled):
                o.response = resp
                o.units = s.entry.units
                o.history_index = s.entry.index
                o.units_left = s.units_left
        return outcomes

    async def _run_engine(self, requests: list[dict]) -> list[dict | ServingError]:
        """The engine on the batch; if the batch fails and has several requests, each is retried alone so one bad
        request does not sink the others."""
        engine = self._require_engine()
        try:
            responses = await asyncio.to_thread(engine.chat, requests)
            return [self._check_response(r) for r in responses] if len(responses) == len(requests) else [
                EngineFailure(f"the engine returned {len(responses)} responses for {len(requests)} requests")
            ] * len(requests)
        except EngineError as exc:
            if len(requests) == 1:
                return [EngineFailure(f"the engine could not serve the request: {exc} (nothing charged)")]
        except Exception as exc:  # a bug in an engine must not take the node down with reservations held
            log.exception("engine failure")
            if len(requests) == 1:
                return [EngineFailure(f"the engine failed: {exc!r} (nothing charged)")]
        out: list[dict | ServingError] = []
        for request in requests:
            out.extend(await self._run_engine([request]))
        return out

    @staticmethod
    def _check_response(response: Any) -> dict | ServingError:
        usage = response.get("usage") if isinstance(response, dict) else None
        if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int) or not isinstance(
            usage.get("completion_tokens"), int
        ):
            return EngineFailure("the engine's response carries no token usage (nothing charged)")
        return response

    # ------------------------------------------------------------------ commitments and settlement
    def history(self, stack_small_id: int) -> StackHistory:
        return self.store.history(stack_small_id)

    async def commitment(self, stack_small_id: int) -> CommitInfo:
        """The commitment (position 0) of the stack's history as recorded so far, and the units to claim."""
        history = await asyncio.to_thread(self.store.history, stack_small_id)
        if not history.entries:
            raise NothingToCommit(
                f"stack {stack_small_id} has no served requests on this node: nothing to commit",
                stack_small_id=stack_small_id,
            )
        extra = (await self.chain.db_config()).cross_validation_extra_nodes_count
        return CommitInfo(stack_small_id, commit(history.leaves, extra, 0), history.units, len(history), extra)

    async def try_settle(self, stack_small_id: int) -> SettleResult:
        """Close the stack to new requests, commit to its history and call ``try_settle_stack`` with
        claimed units = settled usage. Idempotent: a ticket already opened with the same proof is success."""
        stack = await self.chain.get_stack(stack_small_id)
        if stack is None:
            raise StackNotFound(f"stack {stack_small_id} does not exist (or was claimed)", stack_small_id=stack_small_id)
        if stack.selected_node_id != self.node_small_id:
            raise StackNotServedHere(
                f"stack {stack_small_id} was sold to node {stack.selected_node_id}; this is node {self.node_small_id}",
                stack_small_id=stack_small_id,
            )
        await asyncio.to_thread(self.store.begin_settlement, stack_small_id)
        info = await self.commitment(stack_small_id)
        ticket = await self.chain.get_ticket(stack_small_id)
        if ticket is not None:
            if ticket.committed_stack_proof == info.commitment.committed_stack_proof:
                await asyncio.to_thread(self.store.finish_settlement, stack_small_id, self._settlement_doc(info, None, ticket.requested_attestation_nodes))
                return SettleResult(info, None, list(ticket.requested_attestation_nodes), already_settled=True)
            raise StackSettling(
                f"stack {stack_small_id} already has a settlement ticket with another proof", stack_small_id=stack_small_id
            )
        try:
            tx = await self.chain.try_settle_stack(
                self.address,
                stack_small_id=stack_small_id,
                num_claimed_compute_units=info.claimed_units,
                committed_stack_proof=info.commitment.committed_stack_proof,
                stack_merkle_leaf=info.commitment.stack_merkle_leaf,
                node_small_id=self.node_small_id,
            )
        except ChainError:
            await asyncio.to_thread(self.store.abort_settlement, stack_small_id)
            raise
        nodes = [int(n["inner"]) if isinstance(n, dict) else int(n) for n in tx.event("StackTrySettleEvent").parsed_json.get("requested_attestation_nodes", [])]
        await asyncio.to_thread(self.store.finish_settlement, stack_small_id, self._settlement_doc(info, tx.digest, nodes))
        return SettleResult(info, tx, nodes)

    @staticmethod
    def _settlement_doc(info: CommitInfo, digest: str | None, nodes: list[int]) -> dict:
        return {**info.to_json(), "digest": digest, "requested_attestation_nodes": list(nodes)}

    async def attest(self, stack_small_id: int, history: StackHistory, *, batch_size: int = 16) -> AttestResult:
        """As a requested attestation node: replay ``history`` (e.g. imported from the serving node's export)
        through this node's engine, commit to the replayed root at this node's position and submit it."""
        engine = self._require_engine()
        if history.stack_small_id != stack_small_id:
            raise ServingError(f"the history is of stack {history.stack_small_id}, not stack {stack_small_id}")
        ticket = await self.chain.get_ticket(stack_small_id)
        if ticket is None:
            raise StackNotFound(
                f"stack {stack_small_id} has no settlement ticket: there is nothing to attest", stack_small_id=stack_small_id
            )
        if self.node_small_id not in ticket.requested_attestation_nodes:
            raise NotAttester(
                f"node {self.node_small_id} is not among stack {stack_small_id}'s requested attestation nodes "
                f"{ticket.requested_attestation_nodes}",
                stack_small_id=stack_small_id,
            )
        if not history.entries:
            raise NothingToCommit(f"the history of stack {stack_small_id} is empty: nothing to replay")
        position = ticket.requested_attestation_nodes.index(self.node_small_id) + 1
        extra = (await self.chain.db_config()).cross_validation_extra_nodes_count
        report = await asyncio.to_thread(replay, history, engine, batch_size=batch_size)
        mine = commit(report.replayed_leaves, extra, position)
        matches = commit(history.leaves, extra, 0).committed_stack_proof == ticket.committed_stack_proof
        tx = await self.chain.submit_stack_settlement_attestation(
            self.address,
            stack_small_id=stack_small_id,
            committed_stack_proof=mine.committed_stack_proof,
            stack_merkle_leaf=mine.stack_merkle_leaf,
            node_small_id=self.node_small_id,
        )
        names = {e.name for e in tx.events}
        return AttestResult(
            report,
            mine,
            position,
            matches,
            tx,
            disputed="StackAttestationDisputeEvent" in names,
            completed="StackSettlementTicketEvent" in names,
        )
