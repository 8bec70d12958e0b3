"""A deterministic stand-in inference engine, for properties that do not depend on the model: metering under two
processes, crash safety in a subprocess that must start fast, flows whose subject is not the model's output.

Its "chat template" is its own: a prompt costs 10 tokens + 4 per message on top of its words (one token a word);
it answers ``echo echo …`` with ``completion_tokens`` tokens, optionally after ``delay`` seconds and with
``token_delay`` between tokens. ``under_report=True`` makes it a dishonest engine: it reports no prompt count up
front, then 10,000 tokens more than the prompt has, so metering's checks can be tested.
"""

from __future__ import annotations

import asyncio

from atoma_ops.protocol.compute_units import message_texts
from atoma_ops.serving.engines.base import Delta, Engine

__all__ = ["StubEngine"]


class StubEngine(Engine):
    kind = "stub"
    model = "stub"

    def __init__(self, delay: float = 0.0, completion_tokens: int = 3, under_report: bool = False,
                 token_delay: float = 0.0):
        self.delay, self.completion_tokens, self.under_report = delay, completion_tokens, under_report
        self.token_delay = token_delay

    def serves_model(self, name):  # a stand-in for whatever model the task names
        return True

    def count_tokens(self, text):
        return len(text.split())

    def _prompt(self, request) -> int:
        words = sum(self.count_tokens(t) for m in request["messages"] for t in message_texts(m))
        return 10 + 4 * len(request["messages"]) + words

    def prompt_tokens(self, request):
        return None if self.under_report else self._prompt(request)

    async def stream(self, request, sampling):
        if self.delay:
            await asyncio.sleep(self.delay)
        n = min(self.completion_tokens, sampling.max_tokens)
        yield Delta(prompt_tokens=self._prompt(request) + (10_000 if self.under_report else 0))
        for i in range(n):
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            yield Delta("echo" if i == 0 else " echo", 1, finish_reason="length" if i == n - 1 else None)
