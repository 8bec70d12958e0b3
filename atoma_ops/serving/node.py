"""The serving node: admit, run and record chat requests on stacks, and commit to what it recorded.

``NodeService`` serves and commits, nothing more: writing a stage to the chain (try-settle, attest, claim) is
:mod:`atoma_ops.lifecycle`'s, journaled, whoever asks for it (a flow or the CLI). It ties together one node
identity (an address and its NodeBadge small id), the Chain port (stack facts and tickets it reads), the node's
durable store (usage, reservations, history) and an inference engine. Each request takes one path (serve.py):
admission (validate, check the stack on chain, check the model, estimate, reserve — every refusal decided here,
before inference), the engine's stream, then the charge and the history append in one store transaction. Requests
never wait for one another: the engine batches them as it likes, and the store coalesces concurrent writes.

The chain checks run before the reservation (and are cached for ``chain_check_ttl_s``), so a ticket opened by
*another* tool in between could let a request in; this node's own try-settle (``lifecycle.try_settle_stack``)
closes the stack in the store first (no new reservations) and refuses while requests are in flight, so its
commitment always covers everything it charged. ``max_pending`` bounds the requests in progress: past it,
admission answers 429.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chain.errors import InvalidArgument
from ..chain.port import Chain
from ..core.failpoints import failpoint
from ..protocol.commitments import Commitment
from ..protocol.node_http import TX_DIGEST_HEADER
from .engines import ENGINE_KINDS
from .engines.base import SMOLLM2_MODEL, Engine
from ..protocol.events import small_id
from .history import HistoryEntry, StackHistory
from .metering import (
    BadRequest,
    EngineFailure,
    Overloaded,
    NothingToCommit,
    PurchaseNotOwned,
    PurchaseNotVisible,
    RecordedRefusal,
    ServingError,
    StackClaimed,
    StackNotFound,
    StackNotServedHere,
    StackSettling,
    INLINE_COUNT_CHARS,
    estimate,
    estimate_async,
    prompt_chars,
    sampling_of,
    validate_request,
)
from .metrics import NodeMetrics
from .serve import Admission, GroupCommit, Outcome, RequestRun, StoreFailure, now_ms  # noqa: F401 (re-exported)
from .store import NodeStore, Reservation, StackFacts

log = logging.getLogger("atoma_ops.serving")

#: a Sui transaction digest: base58 of 32 bytes (43 or 44 characters)
_DIGEST_RE = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,44}")


def _small_id(value: Any) -> int | None:
    """A small id in an event's parsed JSON (:func:`atoma_ops.protocol.events.small_id`), or None."""
    try:
        return small_id(value)
    except ValueError:
        return None


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


# --------------------------------------------------------------------------------------------------- engines
#: ``load_engine``'s ``tokenizer`` besides a path: the model's own from the local HuggingFace cache when it is there,
#: else the server's /tokenize (the default); always the server's /tokenize
TOKENIZER_AUTO, TOKENIZER_REMOTE = "auto", "remote"


def load_engine(kind: str = "cpu", *, model: str | None = None, base_url: str | None = None,
                tokenizer: str | os.PathLike | None = TOKENIZER_AUTO, **kwargs: Any) -> Engine:
    """Build an engine by kind (``engines.make_engine``): ``cpu`` (SmolLM2 on CPU torch), ``openai`` (an
    OpenAI-compatible server at ``base_url``) or ``vllm`` (vLLM in process). Heavy imports happen here, not at
    module import.

    ``tokenizer`` (``openai`` only): how admission counts tokens. A path to the served model's tokenizer;
    ``"remote"``: the server's ``/tokenize`` (two round trips per request); ``"auto"`` (default) or None: the
    model's tokenizer from the local HuggingFace cache when it is there (``vllm serve`` on the same host downloaded
    it; nothing is downloaded here), else ``/tokenize``."""
    from .engines import make_engine

    if kind not in ENGINE_KINDS:
        raise InvalidArgument(f"unknown engine {kind!r} (one of {', '.join(ENGINE_KINDS)})")
    options: dict[str, Any] = {"model": model or SMOLLM2_MODEL, **kwargs}
    if kind == "openai":
        if not base_url:
            raise InvalidArgument("--engine openai needs --openai-base-url")
        options["base_url"] = base_url
        if tokenizer in (None, TOKENIZER_AUTO):
            from .engines.openai_tokens import cached_tokenizer

            cached = cached_tokenizer(options["model"])
            if cached is not None:  # as the Atoma node does: count here, no /tokenize round trips per request
                log.info("counting tokens with %s's tokenizer from the local HuggingFace cache (%s)", options["model"],
                         cached)
                options["tokenizer"] = cached
        elif tokenizer != TOKENIZER_REMOTE:
            options["tokenizer"] = Path(tokenizer)
    elif tokenizer not in (None, TOKENIZER_AUTO):
        raise InvalidArgument(f"a tokenizer is for the openai engine (the {kind} engine has its model's own)")
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
        max_pending: int = 256,
        chain_check_ttl_s: float = 0.0,
    ):
        self.chain = chain
        self.store = store
        self.engine = engine
        self.address = address
        self.node_small_id = node_small_id
        self.alias = alias
        self._owns_chain = owns_chain
        self.max_pending = max(1, int(max_pending))
        self.chain_check_ttl_s = chain_check_ttl_s
        self.pending = 0  # admitted requests not yet recorded or released
        self.tasks: set[asyncio.Task] = set()
        self.metrics = NodeMetrics()
        self._facts: dict[int, tuple[StackFacts, str | None, float]] = {}
        self.reserver = GroupCommit(store.reserve, on_orphan=self._release_orphan, now=store.reserve_now)
        self.settler = GroupCommit(store.settle)
        self.releaser = GroupCommit(lambda rs: [store.release(rs)] * len(rs))
        self._lease_task: asyncio.Task | None = None
        store.bind_node(node_small_id, address)

    def _release_orphan(self, reservation: Any) -> None:
        """A reservation made for a request whose caller went away during admission."""
        if isinstance(reservation, Reservation):
            self.store.release([reservation])

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
        max_pending: int = 256,
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
                service = cls(chain, store, engine, address=address, node_small_id=small_id, alias=alias, owns_chain=owns,
                              max_pending=max_pending)
            except Exception:
                store.close()
                raise
        except BaseException:
            if owns:
                await chain.close()
            raise
        released = store.recover()
        if released:
            log.warning("released %d reservation(s) whose lease expired (their holder stopped renewing)", released)
        return service

    def sign_hash(self, digest: bytes) -> str:
        """The node's Sui signature over a 32-byte response hash, with its own key (the wallet the chain port
        signs its transactions with): what a buyer checks against the stack's node."""
        return self.chain.wallet.sign_hash(self.address, digest)  # type: ignore[attr-defined]

    def _keep_leases(self) -> None:
        """Renew this process's reservation leases while it has requests in progress (one task per service)."""
        task = self._lease_task
        if task is None or task.done():
            self._lease_task = asyncio.get_running_loop().create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        interval = self.store.lease_ms / 3000
        while self.pending > 0:
            await asyncio.sleep(interval)
            try:
                released = await asyncio.to_thread(self.store.renew)
            except Exception as exc:  # noqa: BLE001 - a busy file: the next turn renews (a lease outlasts two)
                log.warning("renewing reservation leases failed: %r", exc)
                continue
            if released:
                log.warning("released %d reservation(s) whose lease expired (their holder stopped renewing)", released)

    async def close(self) -> None:
        task, self._lease_task = self._lease_task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():  # let it end here, not be destroyed with the loop
                await asyncio.gather(task, return_exceptions=True)
        self.store.close()
        if self._owns_chain:
            await self.chain.close()

    # ------------------------------------------------------------------ checks
    async def check_stack(
        self, stack_small_id: int, *, owner: str | None = None, tx_digest: str | None = None, open_only: bool = True
    ) -> StackFacts:
        """The stack's facts if ``owner`` may spend it on this node now, else the refusal, with the Atoma node's
        codes: no such stack *for this owner* (none, another owner's, another node's) 400; a purchase named by
        ``tx_digest`` that is not visible yet 425, or that bought no such stack for the owner 401; in its settle
        period or claimed 423 (unless ``open_only`` is false: who owns it is all that is asked).

        ``owner`` None is the node's own process (a replay, a test), which may name any stack sold to this node;
        the HTTP server always passes the address that signed the request.
        """
        stack = await self.chain.get_stack(stack_small_id)
        if stack is None:
            served = await asyncio.to_thread(self.store.facts, stack_small_id)
            if served is not None and owner in (None, served.owner):  # served here, then claimed (gone from chain)
                if not open_only:
                    return served
                raise StackClaimed(
                    f"stack {stack_small_id} is gone from the chain (claimed); it takes no more requests, please buy "
                    "a new stack",
                    stack_small_id=stack_small_id,
                )
            if tx_digest is not None:
                return await self._bought(stack_small_id, owner, tx_digest)
            raise StackNotFound(self._not_found(stack_small_id, owner), stack_small_id=stack_small_id)
        if owner is not None and stack.owner != owner:
            if tx_digest is not None:
                raise PurchaseNotOwned(
                    f"transaction {tx_digest} bought no stack {stack_small_id} for {owner}", stack_small_id=stack_small_id
                )
            raise StackNotFound(self._not_found(stack_small_id, owner), stack_small_id=stack_small_id)
        if stack.selected_node_id != self.node_small_id:
            raise StackNotServedHere(
                f"stack {stack_small_id} was sold to node {stack.selected_node_id}; this is node {self.node_small_id}",
                stack_small_id=stack_small_id,
                selected_node_id=stack.selected_node_id,
            )
        if open_only:
            await self.check_open(stack_small_id, stack.is_claimed)
        return StackFacts.of(stack)

    async def check_open(self, stack_small_id: int, is_claimed: bool | None = None) -> None:
        """423 for a claimed stack or one with a settlement ticket (its settle period)."""
        if is_claimed is None:
            stack = await self.chain.get_stack(stack_small_id)
            is_claimed = stack is None or stack.is_claimed
        if is_claimed:
            raise StackClaimed(
                f"stack {stack_small_id} has been claimed; it takes no more requests, please buy a new stack",
                stack_small_id=stack_small_id,
            )
        ticket = await self.chain.get_ticket(stack_small_id)
        if ticket is not None:
            raise StackSettling(
                f"stack {stack_small_id} is in settlement ({ticket.num_claimed_compute_units} compute units claimed); "
                "it takes no more requests, please buy a new stack",
                stack_small_id=stack_small_id,
            )

    @staticmethod
    def _not_found(stack_small_id: int, owner: str | None) -> str:
        whose = f" for {owner}" if owner is not None else ""
        return (f"stack {stack_small_id} does not exist{whose} on this node (a stack bought moments ago: send "
                f"{TX_DIGEST_HEADER} with its purchase's digest)")

    async def _bought(self, stack_small_id: int, owner: str | None, tx_digest: str) -> StackFacts:
        """A stack the chain's reads do not show yet, found through its purchase transaction (``X-Tx-Digest``): its
        ``StackCreatedEvent`` must name this stack, the signer as owner and this node. Until the transaction is
        visible, 425 (the buyer sends the request again)."""
        if not isinstance(tx_digest, str) or not _DIGEST_RE.fullmatch(tx_digest):
            raise BadRequest(f"{TX_DIGEST_HEADER} must be a transaction digest (base58), got {tx_digest!r}")
        tx = await self.chain.get_transaction(tx_digest)
        if tx is None:
            raise PurchaseNotVisible(
                f"transaction {tx_digest} is not visible to this node yet; send the request again shortly",
                stack_small_id=stack_small_id, retry_after_s=1,
            )
        for event in tx.events if tx.ok else ():
            if event.name != "StackCreatedEvent":
                continue
            e = event.parsed_json
            if _small_id(e.get("stack_small_id")) != stack_small_id:
                continue
            if owner is not None and e.get("owner") != owner:
                break
            if _small_id(e.get("selected_node_id")) != self.node_small_id:
                raise StackNotServedHere(
                    f"stack {stack_small_id} was sold to node {_small_id(e.get('selected_node_id'))}; this is node "
                    f"{self.node_small_id}",
                    stack_small_id=stack_small_id,
                )
            return StackFacts(
                stack_small_id, int(e["num_compute_units"]), self.node_small_id, _small_id(e["task_small_id"]),
                e["owner"], int(e["price_per_one_million_compute_units"]),
            )
        raise PurchaseNotOwned(
            f"transaction {tx_digest} bought no stack {stack_small_id}{f' for {owner}' if owner else ''}",
            stack_small_id=stack_small_id,
        )

    # ------------------------------------------------------------------ serving (serve.py: one request, one path)
    def _require_engine(self) -> Engine:
        if self.engine is None:
            raise EngineFailure("this node has no inference engine")
        return self.engine

    @property
    def overloaded(self) -> bool:
        return self.pending >= self.max_pending

    async def stack_facts(
        self, stack_small_id: int, *, owner: str | None = None, tx_digest: str | None = None, open_only: bool = True
    ) -> tuple[StackFacts, str | None]:
        """The stack's facts and its task's model if ``owner`` may spend it here now, else the refusal
        (:meth:`check_stack`). Who owns a stack never changes, so a cached stack is checked against the owner
        without a chain read; whether it is claimed or in settlement is re-read at most every
        ``chain_check_ttl_s`` (this node's own try-settle closes the stack in the store first, whatever the
        cache)."""
        now = time.monotonic()
        cached = self._facts.get(stack_small_id)
        if cached is not None and now - cached[2] < self.chain_check_ttl_s:
            facts = cached[0]
            if owner is not None and facts.owner != owner:
                raise StackNotFound(self._not_found(stack_small_id, owner), stack_small_id=stack_small_id)
            return facts, cached[1]
        facts = await self.check_stack(stack_small_id, owner=owner, tx_digest=tx_digest, open_only=open_only)
        model = cached[1] if cached is not None else None
        if cached is None:
            task = await self.chain.get_task(facts.task_small_id)
            model = task.model_name if task is not None else None
        if open_only:
            self._facts[stack_small_id] = (facts, model, now)
        return facts, model

    def check_model(self, request: dict, task_model: str | None) -> None:
        """The node serves a stack only if its engine runs the stack's task's model (``Engine.serves_model``), and
        ``model`` (optional, as the node knows the stack's task) must name it: the task's model name, or the
        engine's own name for it."""
        engine_model = getattr(self.engine, "model", None)
        if task_model and self.engine is not None and not self.engine.serves_model(task_model):
            raise BadRequest(
                f"this stack's task is for model {task_model!r}, which this node does not serve (its engine runs "
                f"{engine_model!r}); nothing charged",
                param="model",
            )
        asked = request.get("model")
        if asked is None:
            return
        served = {m for m in (task_model, engine_model) if m}
        if asked not in served:
            raise BadRequest(
                f"model {asked!r} is not served for this stack; this node serves {' or '.join(sorted(map(repr, served)))}",
                param="model",
            )

    async def admit(
        self, stack_small_id: int, request: Any, *, request_id: str | None = None, arrived_ms: int | None = None,
        owner: str | None = None, tx_digest: str | None = None,
    ) -> Admission | Outcome:
        """Decide on a request before any inference: validate it, check that ``owner`` (the address that signed it;
        None for the node's own process) may spend the stack, check the model, estimate it and reserve the
        estimate. Returns the Admission (its reservation held until the run ends), or, for a request id this stack
        already served, the recorded Outcome (nothing charged again; only to the stack's owner).

        Raises:
            ServingError: the refusal (nothing reserved). With a request id on the owner's stack, a final refusal
            is remembered and answered again (:class:`RecordedRefusal`) when the id comes back.
        """
        arrived = arrived_ms if arrived_ms is not None else now_ms()
        slot = False  # this admission's place among the requests in progress, handed to its run on success
        owned = False  # a request id whose stack ``owner`` may spend: its final refusal is remembered
        try:
            if self.overloaded:
                raise Overloaded(
                    f"the node has {self.pending} requests in progress (limit {self.max_pending}); retry shortly",
                    retry_after_s=1,
                )
            self.pending += 1
            slot = True
            engine = self._require_engine()
            if request_id is not None:
                if not isinstance(request_id, str) or not 0 < len(request_id) <= 256:
                    raise BadRequest("a request id is a string of 1 to 256 characters", param="request_id")
                # whose stack it is first: a recorded answer or refusal goes only to its owner, and only the owner's
                # refusals are remembered (another address cannot make the owner's request ids refused)
                await self.stack_facts(stack_small_id, owner=owner, tx_digest=tx_digest, open_only=False)
                owned = True
                seen = await asyncio.to_thread(self.store.find_request, stack_small_id, request_id)
                if isinstance(seen, HistoryEntry):
                    return self._recorded(stack_small_id, request, seen)
                if seen is not None:  # finally refused before: the same refusal, not a new judgement
                    raise RecordedRefusal(seen["type"], seen["message"])
            validate_request(request, content_parts=engine.content_parts)
            facts, task_model = await self.stack_facts(stack_small_id, owner=owner, tx_digest=tx_digest)
            self.check_model(request, task_model)
            if getattr(engine, "remote_tokenizer", False) and hasattr(engine, "aprompt_tokens"):
                est = await estimate_async(request, engine)  # the server's /tokenize on this loop's connections
            elif hasattr(engine, "aprompt_tokens") and prompt_chars(request) <= INLINE_COUNT_CHARS:
                # a short prompt on a local tokenizer, right here: a thread hop would cost more than the counting
                # (~0.3 ms), and wait for a core on a loaded box
                est = estimate(request, engine)
            else:
                est = await asyncio.to_thread(estimate, request, engine)
            context = engine.max_context
            if context is not None and est.templated_prompt is not None and est.templated_prompt >= context:
                raise BadRequest(
                    f"the prompt ({est.templated_prompt} tokens) leaves no room in the model's {context}-token context",
                    param="messages",
                )
            drawn = None
            sampling = sampling_of(request)
            if sampling.seed is not None and request.get("seed") is None:
                drawn = sampling.seed
            reservation = await self.reserver.submit((facts, est.reserved))
            if isinstance(reservation, ServingError):
                raise reservation
            self._keep_leases()  # renewed until the run ends (recorded or released)
            failpoint("serve:after-reserve")  # units reserved, nothing served: a crash must not leak them
            self.metrics.of(engine.model).units_reserved.inc(est.reserved)
            admission = Admission(stack_small_id, request, est, sampling, reservation, arrived, request_id, drawn)
            slot = False  # the run started with start(admission) frees it
            return admission
        except ServingError as exc:
            self.metrics.ended(getattr(self.engine, "model", "") or "",
                               "overloaded" if isinstance(exc, Overloaded) else "refused", exc.status)
            if owned and exc.final and not isinstance(exc, RecordedRefusal):
                await asyncio.to_thread(self.store.record_refusal, stack_small_id, request_id, exc.type, str(exc))
            raise
        finally:
            if slot:
                self.pending -= 1

    def _recorded(self, stack_small_id: int, request: dict, entry: HistoryEntry) -> Outcome:
        usage = self.store.usage(stack_small_id)
        self.metrics.ended(getattr(self.engine, "model", "") or "", "duplicate")
        return Outcome(  # the recorded request: the answer (and the hash a signed stream names) are its
            0, stack_small_id, entry.request, response=entry.response, units=entry.units, history_index=entry.index,
            units_left=usage.units_left if usage else None, request_id=entry.request_id, arrived_ms=entry.arrived_ms,
            first_token_ms=entry.first_token_ms, finished_ms=entry.served_at_ms, duplicate=True,
        )

    def start(self, admission: Admission) -> RequestRun:
        """Put an admitted request on the engine (from inside the event loop that will consume it). Every
        Admission must be started: it holds a reservation and a place among the requests in progress."""
        return RequestRun(self, admission)

    async def release(self, reservation: Reservation) -> None:
        await self.releaser.submit(reservation)

    async def serve_one(self, stack_small_id: int, request: dict, *, request_id: str | None = None) -> Outcome:
        """Serve one request to its end; raise its ServingError when refused or failed."""
        admission = await self.admit(stack_small_id, request, request_id=request_id)
        outcome = admission if isinstance(admission, Outcome) else await self.start(admission).result()
        if outcome.error is not None:
            raise outcome.error
        return outcome

    async def drain(self) -> None:
        """Wait for every request in progress to be recorded or released (a server shutting down)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    # ------------------------------------------------------------------ commitments and settlement
    def history(self, stack_small_id: int) -> StackHistory:
        return self.store.history(stack_small_id)

    async def commitment(self, stack_small_id: int) -> CommitInfo:
        """The commitment (position 0) of the stack's history as recorded so far, and the units to claim: from the
        frontier the store folds each leaf into as it is recorded, so O(log N) whatever the history's length."""
        kept = await asyncio.to_thread(self.store.frontier, stack_small_id)
        if kept is None:
            raise NothingToCommit(
                f"stack {stack_small_id} has no served requests on this node: nothing to commit",
                stack_small_id=stack_small_id,
            )
        num_requests, units, frontier = kept
        extra = (await self.chain.db_config()).cross_validation_extra_nodes_count
        return CommitInfo(stack_small_id, frontier.commit(extra, 0), units, num_requests, extra)
