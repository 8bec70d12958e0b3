"""Deterministic replay: re-run a stack's history through an engine and recompute every response hash and ``R``.

The stored requests are sent as they are (same model, same ``max_tokens``, ``temperature``, ``seed`` …): the
decoding is whatever the buyer asked for, and the engine must be deterministic for it (greedy, or seeded sampling;
batch-invariant kernels on GPUs). An attester commits to the replayed root, not to the stored one: a node that
recorded (or committed to) responses its model does not produce is caught by the contract's proof check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from ..protocol.commitments import merkle_root, payload_hash, request_leaf, response_hash
from ..protocol.compute_units import actual_units
from .engines.base import Engine
from .history import StackHistory, response_content


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


def replay_requests(engine: Engine, requests: Sequence[dict], batch_size: int = 16) -> list[dict]:
    """Run ``requests`` through ``engine`` in batches, in order."""
    out: list[dict] = []
    for start in range(0, len(requests), max(1, batch_size)):
        out.extend(engine.chat(list(requests[start : start + batch_size])))
    return out


def replay(history: StackHistory, engine: Engine, *, batch_size: int = 16) -> ReplayReport:
    """Replay a (verified) history through ``engine``; compare every response hash and the root.

    Raises:
        EngineError: the engine could not serve a stored request.
    """
    t0 = time.perf_counter()
    requests = history.requests
    responses = replay_requests(engine, requests, batch_size)
    leaves: list[bytes] = []
    diverging: list[int] = []
    first: Divergence | None = None
    for entry, response in zip(history.entries, responses):
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
