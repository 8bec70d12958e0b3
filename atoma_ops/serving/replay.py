"""Deterministic replay: re-run a stack's history through an engine and recompute every response hash and ``R``.

Each stored request is replayed with the decoding the node used to serve it (``metering.sampling_of``): the
request's own settings (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``), the seed the node drew and
recorded for a sampled request that named none (``HistoryEntry.seed``; histories from before seeds were recorded
sampled unseeded requests with seed 0), and, for a stream its client dropped (``finish_reason`` "abort"), an output
budget of the completion tokens the node recorded: an honest node's aborted stream is then reproduced token for
token, and its replayed response is marked "abort" before hashing, as the node recorded it. The engine must be
deterministic for this (greedy, or seeded sampling; batch-invariant kernels on GPUs).

All of a stack's requests are submitted to the engine at once, at most ``batch_size`` in flight (the engine batches
them: vLLM's continuous batching, the CPU engine's scheduler), and the report keeps serving order. An attester
commits to the replayed root, not to the stored one: a node that recorded (or committed to) responses its model
does not produce is caught by the contract's proof check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Coroutine, TypeVar

from ..protocol.commitments import merkle_root, payload_hash, request_leaf, response_hash
from ..protocol.compute_units import actual_units, max_output_tokens
from .engines.base import FINISH_ABORTED, Engine, EngineError, Sampling, completion
from .history import HistoryEntry, StackHistory, response_content
from .metering import sampling_of

#: the seed a sampled request without one was served with before the node drew and recorded one per request
LEGACY_UNSEEDED_SEED = 0

T = TypeVar("T")


@dataclass(frozen=True)
class Divergence:
    """The first request whose replayed response differs from the stored one."""

    index: int
    request: dict
    stored_content: str | None
    replayed_content: str | None
    stored_response_hash: bytes
    replayed_response_hash: bytes
    stored_usage: dict
    replayed_usage: dict

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "request": self.request,
            "stored_content": self.stored_content,
            "replayed_content": self.replayed_content,
            "stored_response_hash": "0x" + self.stored_response_hash.hex(),
            "replayed_response_hash": "0x" + self.replayed_response_hash.hex(),
            "stored_usage": self.stored_usage,
            "replayed_usage": self.replayed_usage,
        }


@dataclass
class ReplayReport:
    stack_small_id: int
    num_requests: int
    history_root: bytes | None
    replayed_root: bytes | None
    replayed_leaves: list[bytes]
    replayed_responses: list[dict] = field(repr=False, default_factory=list)
    diverging: list[int] = field(default_factory=list)
    first_divergence: Divergence | None = None
    replayed_units: int = 0
    history_units: int = 0
    wall_s: float = 0.0

    @property
    def equal(self) -> bool:
        return not self.diverging and self.history_root == self.replayed_root

    def to_json(self) -> dict:
        hx = lambda b: None if b is None else "0x" + b.hex()  # noqa: E731
        return {
            "stack_small_id": self.stack_small_id,
            "num_requests": self.num_requests,
            "equal": self.equal,
            "history_root": hx(self.history_root),
            "replayed_root": hx(self.replayed_root),
            "num_diverging": len(self.diverging),
            "diverging": self.diverging,
            "first_divergence": self.first_divergence.to_json() if self.first_divergence else None,
            "history_units": self.history_units,
            "replayed_units": self.replayed_units,
            "wall_s": round(self.wall_s, 3),
        }


def _usage(response: dict) -> dict:
    u = response.get("usage") or {}
    return {"prompt_tokens": u.get("prompt_tokens"), "completion_tokens": u.get("completion_tokens")}


def replay_sampling(entry: HistoryEntry) -> Sampling:
    """The decoding a stored request is replayed with: the request's settings, the recorded seed, and for an
    aborted stream the recorded completion length as the output budget (at least 1: an abort before the first
    token is replayed for one token to learn the prompt's length, and that token is dropped; at most the request's
    own budget).

    Raises:
        EngineError: the stored request has decoding settings no engine could run (a history from elsewhere).
    """
    budget = None
    seed = entry.seed if entry.seed is not None else LEGACY_UNSEEDED_SEED
    try:
        if entry.aborted:
            produced = entry.completion_tokens
            if produced is None or produced < 0:
                raise EngineError(f"request {entry.index}: an aborted response without its completion token count")
            # never past the request's own budget: a record of more tokens than the buyer allowed must diverge
            budget = min(max(produced, 1), max_output_tokens(entry.request))
        return sampling_of(entry.request, default_seed=seed, max_tokens=budget)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"request {entry.index}: its decoding settings cannot be replayed ({exc})") from None


def _as_recorded(entry: HistoryEntry, response: dict, model: str) -> dict:
    """The replayed response in the form the node recorded it: an aborted stream is marked "abort" (the node
    recorded what was produced when the client left, whatever the engine would have said next)."""
    if not entry.aborted:
        return response
    usage = response.get("usage") or {}
    if entry.completion_tokens == 0:
        # nothing was produced before the client left: keep the prompt's length, drop the probe token
        return completion(model, "", FINISH_ABORTED, int(usage.get("prompt_tokens") or 0), 0)
    choices = [{**c, "finish_reason": FINISH_ABORTED} for c in response.get("choices") or []]
    return {**response, "choices": choices}


async def replay_responses(engine: Engine, entries: list[HistoryEntry], batch_size: int = 16) -> list[dict]:
    """Run every entry's request through ``engine`` concurrently, at most ``batch_size`` at once; the responses
    come back in the entries' order, as the node recorded them (see :func:`replay_sampling`).

    Raises:
        EngineError: the engine could not serve a stored request (the other replays are cancelled).
    """
    limit = asyncio.Semaphore(max(1, batch_size))
    samplings = [replay_sampling(e) for e in entries]  # refuse a history that cannot be replayed before running any

    async def one(entry: HistoryEntry, sampling: Sampling) -> dict:
        async with limit:
            response = await engine.complete(entry.request, sampling)
        return _as_recorded(entry, response, engine.model)

    tasks = [asyncio.ensure_future(one(e, s)) for e, s in zip(entries, samplings)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:  # one request failed: free the engine of the others at once
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code; from inside a running event loop (where asyncio.run is
    refused), on a worker thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="replay") as pool:
        return pool.submit(asyncio.run, coro).result()


async def areplay(history: StackHistory, engine: Engine, *, batch_size: int = 16) -> ReplayReport:
    """Replay a (verified) history through ``engine``; compare every response hash and the root.

    Raises:
        EngineError: the engine could not serve a stored request.
    """
    t0 = time.perf_counter()
    entries = list(history.entries)
    responses = await replay_responses(engine, entries, batch_size) if entries else []
    leaves: list[bytes] = []
    diverging: list[int] = []
    first: Divergence | None = None
    for entry, response in zip(entries, responses):
        r_hash = response_hash(response)
        leaves.append(request_leaf(payload_hash(entry.request), r_hash))
        if r_hash != entry.response_hash:
            diverging.append(entry.index)
            if first is None:
                first = Divergence(
                    index=entry.index,
                    request=entry.request,
                    stored_content=response_content(entry.response),
                    replayed_content=response_content(response),
                    stored_response_hash=entry.response_hash,
                    replayed_response_hash=r_hash,
                    stored_usage=_usage(entry.response),
                    replayed_usage=_usage(response),
                )
    return ReplayReport(
        stack_small_id=history.stack_small_id,
        num_requests=len(history),
        history_root=history.root,
        replayed_root=merkle_root(leaves) if leaves else None,
        replayed_leaves=leaves,
        replayed_responses=responses,
        diverging=diverging,
        first_divergence=first,
        replayed_units=sum(actual_units(r.get("usage") or {}) for r in responses),
        history_units=history.units,
        wall_s=time.perf_counter() - t0,
    )


def replay(history: StackHistory, engine: Engine, *, batch_size: int = 16) -> ReplayReport:
    """:func:`areplay` from synchronous code (the node's attest runs it in a worker thread).

    Raises:
        EngineError: the engine could not serve a stored request.
    """
    return _run(areplay(history, engine, batch_size=batch_size))
