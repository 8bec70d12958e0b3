"""The stack lifecycle's stages as idempotent operations over the Chain port and the intent journal.

Each function is one stage (or one batch of a stage) and may be run again after any interruption: a chain write
goes through :mod:`atoma_ops.journal` (preflight, resolve at send time, journal, submit, record), and a stage whose
effect is already visible on chain returns what is there. The Prefect tasks in ``tasks/`` are thin wrappers over
these; nothing here imports Prefect.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .chain import codec
from .chain.errors import ChainError, InvalidArgument, NotFound
from .chain.port import Chain
from .chain.types import TxResult
from .journal import (
    FINISHED, ActionResult, Intent, JournalStore, execute_intent, execute_intents, failpoint, resolve_pending,
)
from .protocol import abi, money
from .protocol.commitments import commit
from .protocol.constants import U64_MAX, SecurityLevel
from .serving.history import StackHistory, import_jsonl
from .serving.metering import StackSettling
from .serving.node import NodeService
from .serving.replay import ReplayReport, replay
from .serving.serve import Outcome
from .serving.store import NodeStore

log = logging.getLogger("atoma_ops.lifecycle")


class StageError(ChainError):
    """A stage cannot go on: what is missing and what to do about it."""

    kind = "StageError"


def checked_args(function: str, args: dict) -> dict:
    """``args`` if each fits its Move type, else :class:`InvalidArgument` (a negative or overflowing amount, a
    non-ASCII model name). Stages check before journaling, so a bad argument leaves no row in the ledger."""
    for param in abi.ENTRY_FUNCTIONS[function]:
        if not param.is_object and param.name in args:
            codec.check_value(param.name, param.type, args[param.name])
    return args


def small_id_in(tx: TxResult, event: str, field_name: str) -> int:
    value = tx.event(event).parsed_json[field_name]
    return int(value["inner"]) if isinstance(value, dict) else int(value)


async def _tx_of(chain: Chain, result: ActionResult) -> TxResult:
    if result.tx is not None:
        return result.tx
    if result.digest is None:
        raise NotFound(f"{result.key}: no transaction recorded")
    tx = await chain.get_transaction(result.digest)
    if tx is None:
        raise NotFound(f"{result.key}: transaction {result.digest} not found on chain")
    return tx


# ----------------------------------------------------------------------------------------------- 1. mint
@dataclass
class MintReport:
    address: str
    wanted: int
    balance_before: int
    minted: int
    balance_after: int
    digest: str | None = None


async def mint_usdc(
    chain: Chain, recipient: str, amount: int, *, journal: JournalStore | None = None, key: str | None = None
) -> MintReport:
    """Make ``recipient`` hold at least ``amount`` USDC base units: mint the difference from the localnet's faucet.

    Top-up semantics make a re-run harmless (it mints nothing the second time). With a ``key`` (and a journal) the
    top-up happens once per key: a later run under the same key, after the USDC was spent, mints nothing. On Sui,
    test USDC comes from Circle's faucet web page: a shortfall raises :class:`StageError` saying what is missing and
    where to get it.
    """
    if amount < 0 or amount > U64_MAX:
        raise InvalidArgument(f"amount must be between 0 and {U64_MAX}, not {amount}")
    address = chain.wallet.resolve(recipient)  # type: ignore[attr-defined]
    before = await chain.usdc_balance(address)
    row_key = f"faucet_mint:{key}" if key is not None and journal is not None else None
    if row_key is not None:
        earlier = (await asyncio.to_thread(journal.actions, [row_key])).get(row_key)  # type: ignore[union-attr]
        if earlier is not None and earlier["status"] in FINISHED:
            return MintReport(address, amount, before, 0, before, earlier["digest"])
    report = await _top_up(chain, address, amount, before)
    if report.minted:
        failpoint("faucet:after-mint")  # minted, not yet journaled: the top-up must not mint again
    if row_key is not None:
        await asyncio.to_thread(
            journal.record_actions,  # type: ignore[union-attr]
            [{"idempotency_key": row_key, "kind": "faucet_mint", "status": "success" if report.minted else "already_done",
              "sender": address, "args": {"amount": amount}, "digest": report.digest}],
        )
    return report


async def _top_up(chain: Chain, address: str, amount: int, before: int) -> MintReport:
    missing = amount - before
    if missing <= 0:
        return MintReport(address, amount, before, 0, before)
    faucet = getattr(chain, "faucet_mint", None)
    if faucet is None:
        raise StageError(
            f"{address} holds {before} USDC base units, {missing} short of {amount}. Test USDC on Sui testnet comes "
            "from Circle's faucet (https://faucet.circle.com, network Sui): request it for this address and run again."
        )
    tx = await faucet(address, missing)
    return MintReport(address, amount, before, missing, await chain.usdc_balance(address), tx.digest)


# ----------------------------------------------------------------------------------------------- 2. task
async def create_task(
    chain: Chain,
    journal: JournalStore,
    admin: str,
    *,
    key: str,
    role: int = 0,
    model_name: str | None = None,
    security_level: int | None = None,
    minimum_reputation_score: int | None = None,
    is_public: bool = True,
) -> int:
    """Create a task (admin) once per ``key``; returns its small id (the same on every re-run)."""
    args = checked_args("create_task_entry", {
        "role": role,
        "model_name": model_name,
        "security_level": security_level,
        "minimum_reputation_score": minimum_reputation_score,
        "is_public": is_public,
    })
    result = await execute_intent(chain, journal, Intent(f"create_task_entry:{key}", "create_task_entry", admin, args))
    return small_id_in(await _tx_of(chain, result), "TaskRegisteredEvent", "task_small_id")


async def set_cross_validation(
    chain: Chain, journal: JournalStore, admin: str, *, probability_permille: int | None, extra_nodes_count: int | None
) -> DbConfigChange:
    """Set the Sampling Consensus lottery (admin setters), skipping values already in place."""
    config = await chain.db_config()
    done: dict[str, int] = {}
    for setter, value, current in (
        ("set_cross_validation_probability_permille", probability_permille, config.cross_validation_probability_permille),
        ("set_cross_validation_extra_nodes_count", extra_nodes_count, config.cross_validation_extra_nodes_count),
    ):
        if value is None:
            continue
        if value == current:  # in place; a write a crash left pending is recorded, never re-sent
            await resolve_pending(chain, journal, keys=[f"{setter}:{value}"], resend=False)
            continue
        checked_args(setter, {"value": value})

        async def already(setter_=setter, value_=value) -> bool:
            return getattr(await chain.db_config(), setter_.removeprefix("set_")) == value_

        await execute_intent(
            chain, journal, Intent(f"{setter}:{value}", setter, admin, {"value": value}, done=already, repeatable=True)
        )
        done[setter.removeprefix("set_")] = value
    return DbConfigChange(done)


@dataclass
class DbConfigChange:
    changed: dict[str, int]


# ----------------------------------------------------------------------------------------------- 3. nodes
async def node_small_ids(chain: Chain, address: str) -> list[int]:
    return sorted(b.small_id for b in await chain.badges(address) if b.kind == "NodeBadge" and b.small_id is not None)


async def register_node(chain: Chain, journal: JournalStore, node: str) -> int:
    """Register ``node`` (alias or address) unless it already holds a NodeBadge; returns its small id."""
    address = chain.wallet.resolve(node)  # type: ignore[attr-defined]
    ids = await node_small_ids(chain, address)
    if ids:  # a registration a crash left pending is recorded, not left pending for ever
        await resolve_pending(chain, journal, keys=[f"register_node_entry:{address}"], resend=False)
        return ids[0]

    async def registered() -> bool:
        return bool(await node_small_ids(chain, address))

    # each register_node_entry mints another NodeBadge: callers of one process that all saw no badge yet (concurrent
    # lifecycles registering the same nodes) take turns, so the later ones find the badge in their preflight
    async with _registering(address):
        await execute_intent(chain, journal, Intent(f"register_node_entry:{address}", "register_node_entry", address, done=registered))
    return (await node_small_ids(chain, address))[0]


_register_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]]" = weakref.WeakKeyDictionary()


def _registering(address: str) -> asyncio.Lock:
    """This event loop's lock for registering ``address``."""
    return _register_locks.setdefault(asyncio.get_running_loop(), {}).setdefault(address, asyncio.Lock())


async def subscribe_node(chain: Chain, journal: JournalStore, node: str, *, task_small_id: int, price: int) -> int:
    """Subscribe the node to the task at ``price`` per one million compute units; a subscription at another price
    is updated. Returns the node's small id."""
    checked_args("subscribe_node_to_task", {"task_small_id": task_small_id, "price_per_one_million_compute_units": price})
    address = chain.wallet.resolve(node)  # type: ignore[attr-defined]
    node_id = await register_node(chain, journal, address)

    async def current_price() -> int | None:
        for s in await chain.subscriptions(task_small_id):
            if s.node_small_id == node_id:
                return s.price_per_one_million_compute_units
        return None

    async def at_price() -> bool:
        return await current_price() == price

    existing = await current_price()
    if existing == price:
        await resolve_pending(
            chain, journal, keys=[f"{f}:{task_small_id}:{node_id}:{price}" for f in ("subscribe_node_to_task", "update_node_subscription")],
            resend=False,
        )
        return node_id
    function = "subscribe_node_to_task" if existing is None else "update_node_subscription"
    args = {"task_small_id": task_small_id, "price_per_one_million_compute_units": price, "node_small_id": node_id}
    await execute_intent(
        chain, journal,
        Intent(f"{function}:{task_small_id}:{node_id}:{price}", function, address, args, done=at_price, repeatable=True),
    )
    return node_id


# ----------------------------------------------------------------------------------------------- 4. stack
@dataclass
class BoughtStack:
    stack_small_id: int
    selected_node_id: int
    digest: str | None


async def buy_stack(
    chain: Chain, journal: JournalStore, buyer: str, *, key: str, task_small_id: int, num_compute_units: int, price: int
) -> BoughtStack:
    """Buy one stack per ``key`` (a re-run returns the stack bought the first time, even once it is claimed)."""
    args = checked_args("acquire_new_stack_entry", {"task_small_id": task_small_id, "num_compute_units": num_compute_units, "price": price})
    result = await execute_intent(
        chain, journal, Intent(f"acquire_new_stack_entry:{key}", "acquire_new_stack_entry", buyer, args)
    )
    tx = await _tx_of(chain, result)
    return BoughtStack(
        small_id_in(tx, "StackCreatedEvent", "stack_small_id"),
        small_id_in(tx, "StackCreatedEvent", "selected_node_id"),
        tx.digest,
    )


async def alias_of_node(chain: Chain, node_small_id: int, candidates: Sequence[str]) -> str:
    """Which of the wallet's ``candidates`` (aliases or addresses) holds the NodeBadge ``node_small_id``."""
    for name in candidates:
        address = chain.wallet.resolve(name)  # type: ignore[attr-defined]
        if node_small_id in await node_small_ids(chain, address):
            return name
    raise StageError(f"node {node_small_id} is none of this wallet's nodes ({', '.join(candidates)})")


# ----------------------------------------------------------------------------------------------- 5. serve
#: request ids of a workload's lines: ``wl-<digest>-<line index>`` (see :func:`workload_id`)
WORKLOAD_ID_PREFIX = "wl-"


@dataclass
class ServeReport:
    """What serving ``workload[start:stop]`` on a stack did (JSON-serialisable: a Prefect task result).

    ``served`` / ``refused`` are this run's; ``already_served`` / ``already_refused`` were skipped because an
    earlier run recorded them (under the same workload id); ``failed`` are requests the engine or the store could
    not finish (nothing charged, nothing recorded: a re-run serves them again). ``units_charged`` and
    ``completion_tokens`` are this run's; ``units_used`` / ``units_left`` are the stack's after it.
    """

    stack_small_id: int
    served: int
    refused: list[dict]
    already_served: int
    units_used: int
    units_left: int
    workload_id: str = ""
    start: int = 0
    stop: int = 0
    already_refused: int = 0
    failed: list[dict] = field(default_factory=list)
    units_charged: int = 0
    completion_tokens: int = 0

    @property
    def requests(self) -> int:
        return self.stop - self.start

    def to_json(self) -> dict:
        return asdict(self)


def _canonical(request: dict) -> dict:
    return {k: v for k, v in request.items() if k != "stream"}


def workload_id(workload: Sequence[dict]) -> str:
    """``wl-`` and a short blake2b of the workload's canonical JSON (its requests in order, keys sorted, ``stream``
    left out): the same requests are the same workload whatever the file's comments, blank lines or key order, and
    a changed workload is another workload (served afresh, nothing skipped)."""
    canonical = json.dumps([_canonical(r) for r in workload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return WORKLOAD_ID_PREFIX + hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def workload_request_id(workload_key: str, index: int) -> str:
    """The request id of line ``index`` (0-based, requests only) of the workload ``workload_key``."""
    return f"{workload_key}-{index}"


def _problem(index: int, request_id: str | None, error: Any) -> dict:
    return {"index": index, "request_id": request_id, "type": error.type, "error": str(error)}


async def serve_workload(
    service: NodeService,
    stack_small_id: int,
    workload: Sequence[dict],
    start: int = 0,
    stop: int | None = None,
    *,
    concurrency: int = 8,
    workload_key: str | None = None,
    on_skipped: Callable[[int, str], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> tuple[ServeReport, list[Outcome]]:
    """Serve ``workload[start:stop]`` on the stack, ``concurrency`` requests at once on the engine, recorded in the
    workload's order. Each line carries the request id ``wl-<digest>-<index>``: lines the stack already served or
    refused under that id are skipped, so a re-run (after a crash, a refusal or a completed run) never fails and
    never charges twice, and a final refusal (a 4xx but 429) is recorded so the next run skips it too.

    ``on_skipped(index, "served"|"refused")`` is called for each skipped line, ``on_outcome(outcome)`` as each
    served line ends (``outcome.index`` is the line's index in the workload). Returns the report and this run's
    outcomes, in order.
    """
    stop = len(workload) if stop is None else min(stop, len(workload))
    start = max(0, start)
    key = workload_key or workload_id(workload)
    known = await asyncio.to_thread(service.store.request_ids, stack_small_id, key + "-")
    report = ServeReport(stack_small_id, 0, [], 0, 0, 0, key, start, max(start, stop))
    todo: list[int] = []
    for i in range(start, stop):
        seen = known.get(workload_request_id(key, i))
        if seen is None:
            todo.append(i)
            continue
        if seen == "served":
            report.already_served += 1
        else:
            report.already_refused += 1
        if on_skipped is not None:
            on_skipped(i, seen)

    mapped: set[int] = set()

    def landed(outcome: Outcome) -> None:  # serve's index is the position in ``todo``: make it the line's
        if id(outcome) not in mapped:
            mapped.add(id(outcome))
            outcome.index = todo[outcome.index]
        if on_outcome is not None:
            on_outcome(outcome)

    outcomes: list[Outcome] = []
    if todo:
        outcomes = await service.serve(
            stack_small_id,
            [workload[i] for i in todo],
            concurrency=max(1, min(concurrency, service.max_pending)),  # past max_pending admission would say 429
            request_ids=[workload_request_id(key, i) for i in todo],
            on_outcome=landed,
        )
    for position, o in enumerate(outcomes):
        if id(o) not in mapped:
            o.index = todo[position]
        if o.ok and o.duplicate:  # another run served it meanwhile: nothing charged here
            report.already_served += 1
        elif o.ok:
            report.served += 1
            report.units_charged += o.units
            report.completion_tokens += int(((o.response or {}).get("usage") or {}).get("completion_tokens") or 0)
        elif o.error.final:  # type: ignore[union-attr]
            report.refused.append(_problem(o.index, o.request_id, o.error))
        else:
            report.failed.append(_problem(o.index, o.request_id, o.error))
    usage = await asyncio.to_thread(service.store.usage, stack_small_id)
    report.units_used = usage.used_units if usage else 0
    report.units_left = usage.units_left if usage else 0
    return report, outcomes


async def serve_batch(
    service: NodeService, stack_small_id: int, workload: Sequence[dict], start: int, stop: int, *, concurrency: int = 8,
    workload_key: str | None = None,
) -> ServeReport:
    """Serve the window ``workload[start:stop]`` (one task's worth) through :func:`serve_workload`."""
    report, _ = await serve_workload(
        service, stack_small_id, workload, start, stop, concurrency=concurrency, workload_key=workload_key
    )
    return report


# ----------------------------------------------------------------------------------------------- 6. try-settle
@dataclass
class Settled:
    stack_small_id: int
    status: str
    claimed_units: int
    num_requests: int
    digest: str | None
    requested_attestation_nodes: list[int] = field(default_factory=list)
    error: str | None = None
    dispute_settled_at_epoch: int | None = None


async def try_settle_stacks(service: NodeService, journal: JournalStore, stack_small_ids: Sequence[int]) -> list[Settled]:
    """Close each stack to new requests and settle it with a commitment recomputed from its history just before
    signing. A ticket already on chain with this history's proof counts as done; one with another proof is an
    error for that stack (the others go on). The store is written once per batch, not once per stack."""
    chain = service.chain
    store = service.store
    extra = (await chain.db_config()).cross_validation_extra_nodes_count
    begun = await asyncio.to_thread(store.begin_settlements, list(stack_small_ids))
    out: dict[int, Settled] = {}
    open_ids = []
    for sid, state in zip(stack_small_ids, begun):
        if isinstance(state, Exception):
            out[sid] = Settled(sid, "skipped", 0, 0, None, error=str(state))
        elif state == "settled":  # settled by an earlier run: report what it recorded
            usage = store.usage(sid)
            doc = (usage.settlement if usage else None) or {}
            out[sid] = Settled(
                sid, "already_done", doc.get("num_claimed_compute_units", 0), doc.get("num_requests", 0),
                doc.get("digest"), list(doc.get("requested_attestation_nodes", [])),
                dispute_settled_at_epoch=doc.get("dispute_settled_at_epoch"),
            )
        else:
            open_ids.append(sid)
    # the history is final now that the stacks take no more requests: commit to it once, at send time
    commitments: dict[int, tuple[StackHistory, Any]] = {}

    def commitment(sid: int) -> tuple[StackHistory, Any]:
        if sid not in commitments:
            history = store.history(sid)
            commitments[sid] = (history, commit(history.leaves, extra, 0))
        return commitments[sid]

    intents: list[Intent] = []
    for sid in open_ids:

        async def resolve(sid_: int = sid) -> dict:
            history, c = commitment(sid_)
            return {
                "stack_small_id": sid_,
                "num_claimed_compute_units": history.units,
                "committed_stack_proof": c.committed_stack_proof,
                "stack_merkle_leaf": c.stack_merkle_leaf,
                "node_small_id": service.node_small_id,
            }

        async def done(sid_: int = sid) -> bool:
            ticket = await chain.get_ticket(sid_)
            if ticket is None:
                return False
            if ticket.committed_stack_proof != commitment(sid_)[1].committed_stack_proof:
                raise StackSettling(f"stack {sid_} already has a settlement ticket with another proof", stack_small_id=sid_)
            return True

        intents.append(Intent(f"try_settle_stack:{sid}", "try_settle_stack", service.address, resolve=resolve, done=done, stack_small_id=sid))
    results = await execute_intents(chain, journal, intents, raise_on_failure=False) if intents else []
    failed, finished = [], {}
    for sid, r in zip(open_ids, results):
        if not r.ok:
            failed.append(sid)
            out[sid] = Settled(sid, "failed", 0, 0, r.digest, error=str(r.error))
            continue
        history, c = commitment(sid)
        nodes: list[int] = []
        last_epoch = None
        if r.tx is not None:
            event = r.tx.event("StackTrySettleEvent").parsed_json
            nodes = [int(n["inner"]) if isinstance(n, dict) else int(n) for n in event.get("requested_attestation_nodes", [])]
            last_epoch = r.tx.epoch + 1
        else:
            ticket = await chain.get_ticket(sid)
            if ticket is not None:
                nodes, last_epoch = list(ticket.requested_attestation_nodes), ticket.dispute_settled_at_epoch
        finished[sid] = {
            "stack_small_id": sid,
            "root": "0x" + c.root.hex(),
            "committed_stack_proof": "0x" + c.committed_stack_proof.hex(),
            "num_requests": len(history),
            "num_claimed_compute_units": history.units,
            "digest": r.digest,
            "requested_attestation_nodes": nodes,
            "dispute_settled_at_epoch": last_epoch,
        }
        out[sid] = Settled(sid, r.status, history.units, len(history), r.digest, nodes, dispute_settled_at_epoch=last_epoch)
    if failed:
        await asyncio.to_thread(store.abort_settlements, failed)
    if finished:
        await asyncio.to_thread(store.finish_settlements, finished)
    return [out[s] for s in stack_small_ids]


@dataclass
class SettleCandidate:
    stack_small_id: int
    reason: str  # exhausted | idle
    used_units: int
    num_compute_units: int


def settle_candidates(
    store: NodeStore, *, now_ms: int | None = None, idle_after_s: float = 3600.0, exhausted_below_units: int = 1
) -> list[SettleCandidate]:
    """Stacks this node served that are still open, or whose settlement was interrupted, and are exhausted (fewer
    than ``exhausted_below_units`` units left) or idle (nothing served for ``idle_after_s``)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    last = store.last_served_ms()
    out = []
    for u in store.stacks():
        if u.num_requests == 0 or u.in_flight or u.state == "settled":
            continue
        if u.state == "settling":
            out.append(SettleCandidate(u.stack_small_id, "interrupted", u.used_units, u.num_compute_units))
        elif u.units_left < exhausted_below_units:
            out.append(SettleCandidate(u.stack_small_id, "exhausted", u.used_units, u.num_compute_units))
        elif now_ms - last.get(u.stack_small_id, now_ms) >= idle_after_s * 1000:
            out.append(SettleCandidate(u.stack_small_id, "idle", u.used_units, u.num_compute_units))
    return out


async def split_confidential(chain: Chain, candidates: Sequence[SettleCandidate]) -> tuple[list[SettleCandidate], list[SettleCandidate]]:
    """(ticket path, confidential path): ConfidentialCompute stacks are claimed with ``claim_funds_for_stacks`` and
    never try-settled; every other stack goes through a settlement ticket."""
    levels: dict[int, int | None] = {}
    tickets, confidential = [], []
    for c in candidates:
        stack = await chain.get_stack(c.stack_small_id)
        if stack is None or stack.is_claimed:
            continue
        if stack.task_small_id not in levels:
            task = await chain.get_task(stack.task_small_id)
            levels[stack.task_small_id] = task.security_level if task else None
        (confidential if levels[stack.task_small_id] == SecurityLevel.CONFIDENTIAL_COMPUTE else tickets).append(c)
    return tickets, confidential


# ----------------------------------------------------------------------------------------------- 7. attest
@dataclass
class Attested:
    stack_small_id: int
    status: str
    position: int
    replay: dict
    digest: str | None
    disputed: bool
    completed: bool


def find_history(stack_small_id: int, *, home: str | Path | None = None, history_dir: str | Path | None = None) -> StackHistory:
    """The serving node's history of a stack: an export ``<history_dir>/stack-<id>.jsonl``, or the store of the node
    that served it under ``<home>/nodes/``."""
    if history_dir is not None:
        path = Path(history_dir) / f"stack-{stack_small_id}.jsonl"
        if path.exists():
            return import_jsonl(path, expect_stack=stack_small_id)
    if home is not None:
        for db in sorted((Path(home) / "nodes").glob("*/serving.sqlite")):
            with NodeStore(db) as store:
                if store.usage(stack_small_id) is not None:
                    history = store.history(stack_small_id)
                    if history.entries:
                        return history.verify()
    raise StageError(
        f"no history of stack {stack_small_id} found (looked in {history_dir or '-'} and the node stores under "
        f"{home or '-'}): ask the serving node for its export (`atoma-ops stack history --export`)"
    )


async def attestation_position(service: NodeService, stack_small_id: int) -> int:
    """This node's position among the stack's requested attestation nodes (1-based: leaf slot), or a StageError."""
    ticket = await service.chain.get_ticket(stack_small_id)
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


async def submit_attestation(
    service: NodeService, journal: JournalStore, stack_small_id: int, replayed_leaves: Sequence[bytes], replay_doc: dict | None = None
) -> Attested:
    """Submit this node's attestation for the replayed leaves (once: a node already counted is done)."""
    chain = service.chain
    key = f"submit_stack_settlement_attestation:{stack_small_id}:{service.node_small_id}"
    earlier = (await asyncio.to_thread(journal.actions, [key])).get(key)
    if earlier is not None and earlier["status"] in FINISHED:  # attested by an earlier run (the ticket may be gone)
        ticket = await chain.get_ticket(stack_small_id)
        return Attested(
            stack_small_id, earlier["status"], 0, replay_doc or {}, earlier["digest"],
            disputed=bool(ticket and ticket.is_in_dispute), completed=True,
        )
    position = await attestation_position(service, stack_small_id)
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
            stack_small_id=stack_small_id,
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


# ----------------------------------------------------------------------------------------------- 8. claim
@dataclass
class Claimed:
    stack_small_id: int
    path: str  # ticket | confidential
    units: int
    node_fee: int | None  # None for a claim recovered after a crash (its stack is gone from chain)
    refund: int
    digest: str | None
    status: str


@dataclass
class ClaimPlan:
    tickets: list[int]  # claim_funds
    confidential: list[tuple[int, int]]  # claim_funds_for_stacks: (stack, units)
    waiting: list[dict]  # not yet claimable, and why
    recovered: list[Claimed] = field(default_factory=list)  # claims a crash had left in doubt, finished now
    claimed: list[int] = field(default_factory=list)  # stacks of this node claimed before: nothing left to do


async def recover_claims(service: NodeService, journal: JournalStore | None) -> list[Claimed]:
    """Finish claim batches a crash left ``pending``: their stacks may be gone from chain already, so no plan would
    rebuild them. Each is resolved by digest (or its identical bytes re-sent) and its stacks are marked claimed."""
    if journal is None:
        return []
    results = await resolve_pending(
        service.chain, journal, sender=service.address, kinds=("claim_funds", "claim_funds_for_stacks")
    )
    claimed: dict[int, str] = {}
    out: list[Claimed] = []
    for r in results:
        if not r.ok:
            continue
        ids = [int(x) for x in r.key.rsplit(":", 1)[1].split(",") if x]
        claimed.update({sid: r.digest or "" for sid in ids})
        path = "ticket" if r.function == "claim_funds" else "confidential"
        events = {}
        if r.tx is not None:
            for e in r.tx.events:
                if e.name in ("StackSettlementTicketClaimedEvent", "ClaimedStackEvent"):
                    events[int(e.parsed_json["stack_small_id"]["inner"])] = e.parsed_json
        for sid in ids:
            e = events.get(sid, {})
            # the stacks are gone (or marked claimed): the node fee is not in the event, only in the balance change
            out.append(Claimed(sid, path, int(e.get("num_claimed_compute_units", 0)), None,  # type: ignore[arg-type]
                               int(e.get("user_refund_amount", 0)), r.digest, r.status))
    if claimed:
        await asyncio.to_thread(service.store.note_claimed_many, claimed)
    return out


async def plan_claims(service: NodeService, journal: JournalStore | None = None) -> ClaimPlan:
    """What this node can claim now, from the stacks its store settled (and confidential stacks it served)."""
    chain = service.chain
    recovered = await recover_claims(service, journal)
    epoch = await chain.current_epoch()
    plan = ClaimPlan([], [], [], recovered)
    tasks: dict[int, Any] = {}
    for u in await asyncio.to_thread(service.store.stacks):
        settlement = u.settlement or {}
        if settlement.get("claimed_digest"):
            plan.claimed.append(u.stack_small_id)
            continue
        claimable_from = settlement.get("dispute_settled_at_epoch")
        if u.state == "settled" and claimable_from is not None and epoch < claimable_from:
            # the ticket's epoch never changes: no chain read needed to know it must wait
            plan.waiting.append({"stack_small_id": u.stack_small_id, "why": f"claimable from epoch {claimable_from} (now {epoch})"})
            continue
        stack = await chain.get_stack(u.stack_small_id)
        if stack is None or stack.is_claimed:  # claim_funds deletes the stack; the confidential path marks it
            plan.claimed.append(u.stack_small_id)
            continue
        if stack.task_small_id not in tasks:
            tasks[stack.task_small_id] = await chain.get_task(stack.task_small_id)
        task = tasks[stack.task_small_id]
        if task is not None and task.security_level == SecurityLevel.CONFIDENTIAL_COMPUTE:
            if u.state == "open" and u.num_requests and not u.in_flight:
                plan.confidential.append((u.stack_small_id, u.used_units))
            continue
        if u.state != "settled":
            continue
        ticket = await chain.get_ticket(u.stack_small_id)
        if ticket is None:
            continue
        if ticket.is_in_dispute:
            plan.waiting.append({"stack_small_id": u.stack_small_id, "why": "in dispute (terminal: never claimable)"})
        elif epoch < ticket.dispute_settled_at_epoch:
            plan.waiting.append({"stack_small_id": u.stack_small_id, "why": f"claimable from epoch {ticket.dispute_settled_at_epoch} (now {epoch})"})
        else:
            plan.tickets.append(u.stack_small_id)
    return plan


async def claim_tickets(service: NodeService, journal: JournalStore, stack_small_ids: Sequence[int], *, batch_size: int = 100) -> list[Claimed]:
    """``claim_funds`` for settled tickets whose window has passed, ``batch_size`` tickets per transaction."""
    return await _claim(service, journal, [(s, None) for s in stack_small_ids], "ticket", batch_size)


async def claim_confidential(service: NodeService, journal: JournalStore, stacks: Sequence[tuple[int, int]], *, batch_size: int = 100) -> list[Claimed]:
    """``claim_funds_for_stacks`` for ConfidentialCompute stacks: (stack small id, units to claim)."""
    return await _claim(service, journal, list(stacks), "confidential", batch_size)


async def _claim(service: NodeService, journal: JournalStore, items: list[tuple[int, int | None]], path: str, batch_size: int) -> list[Claimed]:
    """One claim transaction per ``batch_size`` items, all of them journaled as one batch of intents (one ledger
    read and two ledger writes per call, not per transaction: a ledger write costs ~0.1 s). Every transaction is
    submitted; then the successful ones are noted in the store and, if the chain refused one, its error is raised."""
    chain = service.chain
    config = await chain.db_config()
    tasks: dict[int, Any] = {}
    batches: list[tuple[list[int], dict[int, tuple[int, int, int]]]] = []
    intents: list[Intent] = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        ids = [s for s, _ in batch]
        amounts: dict[int, tuple[int, int, int]] = {}
        for sid, units in batch:
            stack = await chain.get_stack(sid)
            if stack is None:
                continue
            if stack.task_small_id not in tasks:
                tasks[stack.task_small_id] = await chain.get_task(stack.task_small_id)
            task = tasks[stack.task_small_id]
            level = task.security_level if task else 0
            if units is None:
                ticket = await chain.get_ticket(sid)
                units = ticket.num_claimed_compute_units if ticket else 0
            fee = money.stack_fee_amount(level, stack.price_per_one_million_compute_units, units, config.sampling_consensus_charge_permille) if path == "ticket" else money.confidential_claim_amount(stack.price_per_one_million_compute_units, units)
            rest = stack.num_compute_units - units
            refund = money.stack_fee_amount(level, stack.price_per_one_million_compute_units, rest, config.sampling_consensus_charge_permille) if path == "ticket" else money.confidential_claim_amount(stack.price_per_one_million_compute_units, rest)
            amounts[sid] = (units, fee, refund)

        async def done(ids_: list[int] = ids) -> bool:
            for sid in ids_:
                stack = await chain.get_stack(sid)
                if stack is not None and not stack.is_claimed:
                    return False
            return True

        key = ",".join(map(str, ids))
        if path == "ticket":
            intent = Intent(f"claim_funds:{service.node_small_id}:{key}", "claim_funds", service.address,
                            {"settled_ticket_ids": ids, "node_small_id": service.node_small_id}, done=done)
        else:
            intent = Intent(f"claim_funds_for_stacks:{service.node_small_id}:{key}", "claim_funds_for_stacks", service.address,
                            {"stack_small_ids": ids, "num_compute_units_per_stack_to_claim": [u for _, u in batch],
                             "node_small_id": service.node_small_id}, done=done)
        intents.append(intent)
        batches.append((ids, amounts))
    results = await execute_intents(chain, journal, intents, raise_on_failure=False) if intents else []
    claimed: list[Claimed] = []
    noted: dict[int, str] = {}
    refused: BaseException | None = None
    for (ids, amounts), result in zip(batches, results):
        if not result.ok:
            refused = refused or result.error or StageError(f"{result.key}: {result.status}")
            continue
        for sid in ids:
            units, fee, refund = amounts.get(sid, (0, 0, 0))
            claimed.append(Claimed(sid, path, units, fee, refund, result.digest, result.status))
            noted[sid] = result.digest or ""
    if noted:
        await asyncio.to_thread(service.store.note_claimed_many, noted)
    if refused is not None:
        raise refused
    return claimed


# ----------------------------------------------------------------------------------------------- 7'. wait
async def wait_for_epoch(chain: Chain, epoch: int, *, poll_s: float = 1.0, timeout_s: float = 600.0, advance_localnet: bool = False) -> int:
    """Wait until the chain's epoch reaches ``epoch``. On a localnet without wall-clock epochs nothing moves time
    but us: with ``advance_localnet`` the epoch is advanced instead of waited for."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = await chain.current_epoch()
        if now >= epoch:
            return now
        if advance_localnet and hasattr(chain, "advance_epoch"):
            await chain.advance_epoch(epoch - now)  # type: ignore[attr-defined]
            continue
        if time.monotonic() >= deadline:
            raise StageError(f"epoch {epoch} not reached after {timeout_s:.0f} s (the chain is at {now})")
        await asyncio.sleep(poll_s)


def as_rows(items: Sequence[Any]) -> list[dict]:
    return [asdict(i) for i in items]
