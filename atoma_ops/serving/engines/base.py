"""One interface for every inference engine: one chat request in, its tokens streamed out as they are produced.

An engine serves each request on its own (``Engine.stream``); batching is the engine's business (vLLM's continuous
batching, the CPU engine's scheduler stepping every active sequence together), never a barrier in front of it. The
node (serving/node.py) admits, meters and records each request around that stream.

The contract of ``stream(request, sampling)``:

- ``request`` is a validated OpenAI ``/v1/chat/completions`` body (metering.validate_request): the engine reads its
  ``messages`` (and nothing else of it: every decoding setting comes in ``sampling``, already checked and defaulted,
  with the seed the node chose for unseeded sampling);
- it yields :class:`Delta` items as text is produced; ``tokens`` counts the completion tokens each delta adds; the
  first delta carries ``prompt_tokens`` (the templated prompt as the model reads it); the last one carries
  ``finish_reason`` ("stop" or "length") and nothing follows it;
- closing the iterator early (``aclose()``, or the task being cancelled) stops generation and frees the request's
  share of the engine at once; what was yielded until then is all that was produced;
- a request the engine cannot serve raises :class:`EngineError` (before or while streaming); other requests are
  never affected by it.

``complete`` (one request to a ``chat.completion`` dict) and ``chat`` (a list of requests, sync, concurrent) are
built on ``stream`` for tools, tests and replays.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

SMOLLM2_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

#: finish reason recorded for a stream its client dropped: what was produced until then, no more
FINISH_ABORTED = "abort"


class EngineError(Exception):
    """The engine could not serve a request (bad request for this model, server down, out of context).
    ``status``: the HTTP status a server behind the engine answered, when it did (its 4xx is the request's fault)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Sampling:
    """The decoding settings of one request, validated and defaulted (metering.sampling_of builds them).

    ``temperature == 0`` is greedy (``top_p`` and ``seed`` then play no part); ``seed`` is always set when
    ``temperature > 0`` (the node draws one for unseeded requests and records it, so a replay reproduces the
    sample). ``stop`` strings end generation; the text returned stops before the first of them.
    """

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError("max_tokens must be a positive integer")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be in [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Delta:
    """A piece of one request's output.

    Attributes:
        text: text added since the previous delta ("" allowed: a token that completes no character yet).
        tokens: completion tokens this delta adds.
        prompt_tokens: tokens of the prompt as the model read it (the first delta carries it; None elsewhere).
        finish_reason: on the last delta only: "stop" (end of sequence or a stop string) or "length".
    """

    text: str = ""
    tokens: int = 0
    prompt_tokens: int | None = None
    finish_reason: str | None = None


@dataclass
class Generation:
    """A stream folded up: what a request produced so far (the node keeps one per running request)."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    deltas: int = 0
    parts: list[str] = field(default_factory=list, repr=False)

    def add(self, delta: Delta) -> None:
        if delta.prompt_tokens is not None:
            self.prompt_tokens = delta.prompt_tokens
        if delta.text:
            self.parts.append(delta.text)
        self.completion_tokens += delta.tokens
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        self.deltas += 1

    @property
    def content(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def completion(self, model: str, finish_reason: str | None = None) -> dict:
        return completion(
            model, self.content, finish_reason or self.finish_reason or FINISH_ABORTED,
            self.prompt_tokens, self.completion_tokens,
        )


class Engine(ABC):
    """An inference engine serving one request at a time per call, any number of calls at once."""

    kind: str = "engine"
    model: str
    #: the message content part types the model reads (OpenAI's ``type``); None: any, relayed to a server that
    #: decides (the node refuses other parts at admission instead of dropping them and charging the request)
    content_parts: frozenset[str] | None = frozenset({"text"})
    #: the model's context window in tokens (prompt + completion), when known
    max_context: int | None = None

    def serves_model(self, name: str) -> bool:
        """Whether this engine's model is the model a task names (a task's model is a HuggingFace name): the node
        serves a stack only for a task whose model its engine runs."""
        return name == self.model

    @abstractmethod
    def stream(self, request: dict, sampling: Sampling) -> AsyncIterator[Delta]:
        """Generate the answer to one chat request, yielding deltas as they are produced (see the module doc)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of a text under the model's tokenizer (no special tokens): the Atoma estimate's unit."""

    def prompt_tokens(self, request: dict) -> int | None:
        """Tokens of the prompt after the chat template, when the engine can tell before running (None if not)."""
        return None

    async def complete(self, request: dict, sampling: Sampling) -> dict:
        """Run one request to its end: an OpenAI ``chat.completion`` dict with ``usage``."""
        gen = Generation()
        async for delta in self.stream(request, sampling):
            gen.add(delta)
        if gen.finish_reason is None:
            raise EngineError("the engine's stream ended without a finish reason")
        return gen.completion(self.model)

    def chat(self, requests: Sequence[dict], samplings: Sequence[Sampling] | None = None) -> list[dict]:
        """Run requests concurrently to their ends, from synchronous code (not from a running event loop); the
        responses come back in order. Each request's decoding comes from ``samplings`` or, when not given, from the
        request itself (``metering.sampling_of``; unseeded sampling uses seed 0 here)."""
        from ..metering import sampling_of  # the one place that turns a request into Sampling

        requests = list(requests)
        if samplings is None:
            samplings = [sampling_of(r, default_seed=0) for r in requests]

        async def run() -> list[dict]:
            return list(await asyncio.gather(*(self.complete(r, s) for r, s in zip(requests, samplings))))

        return asyncio.run(run()) if requests else []

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completion(model: str, content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """An OpenAI ``chat.completion`` body."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
