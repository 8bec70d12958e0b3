"""Helpers for the serving tests (no tests here): a localnet market, nodes, requests, and a stub engine.

The stub engine is only for properties that do not depend on the model (metering under two processes, crash
safety in a subprocess that must start fast); everything else runs the real CPU engine (the session ``engine``
fixture of tests/serving/conftest.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chain"))

from chainkit import CONFIDENTIAL, NO_SECURITY, SAMPLING, Net  # noqa: E402

from atoma_ops.serving.node import NodeService  # noqa: E402

__all__ = ["CONFIDENTIAL", "NO_SECURITY", "SAMPLING", "Net", "PRICE", "STUB_ENGINE_SRC", "ask", "market", "net",
           "open_node", "stub_engine"]

PRICE = 1_000_000  # 1 USDC per 1M compute units
REPO = Path(__file__).resolve().parents[2]

WORDS = ["cats", "dogs", "rain", "tea", "stars", "maps", "bread", "rivers", "clocks", "owls", "salt", "bees",
         "snow", "glass", "kites", "moss", "ink", "lamps", "ships", "figs", "wolves", "bells"]


@pytest.fixture
def net(chain, draws):
    n = Net(chain, draws)
    yield n
    n.close()


def market(net: Net, security: int = SAMPLING, nodes: tuple[str, ...] = ("node-1", "node-2")) -> int:
    """A task with ``nodes`` registered and subscribed at PRICE (node small ids 1, 2, … in order); the user has
    100 USDC. Returns the task small id."""
    net.mint("user", 100_000_000)
    t = net.task(security, model="HuggingFaceTB/SmolLM2-135M-Instruct")
    for alias in nodes:
        net.node(alias)
        net.sub(alias, t, PRICE)
    return t


def open_node(net: Net, home, alias: str, engine) -> NodeService:
    """A NodeService for ``alias`` sharing the test's chain connection; its store is <home>/nodes/<alias>/."""
    return net.run(NodeService.open(home.path, alias, engine, chain=net.chain))


def ask(i: int | str, max_tokens: int = 8, **extra) -> dict:
    topic = WORDS[i % len(WORDS)] if isinstance(i, int) else i
    return {"messages": [{"role": "user", "content": f"Say something about {topic}."}], "max_tokens": max_tokens, **extra}


# A deterministic engine with a "chat template" of its own (10 tokens + 4 per message on top of the words), in source
# form so subprocess scripts can define it too.
STUB_ENGINE_SRC = '''
import asyncio as _asyncio
from atoma_ops.serving.engines.base import Delta, Engine
from atoma_ops.protocol.compute_units import message_texts

class StubEngine(Engine):
    kind = "stub"
    model = "stub"

    def __init__(self, delay=0.0, completion_tokens=3, under_report=False, token_delay=0.0):
        self.delay, self.completion_tokens, self.under_report = delay, completion_tokens, under_report
        self.token_delay = token_delay

    def count_tokens(self, text):
        return len(text.split())

    def prompt_tokens(self, request):
        if self.under_report:
            return None
        words = sum(self.count_tokens(t) for m in request["messages"] for t in message_texts(m))
        return 10 + 4 * len(request["messages"]) + words

    async def stream(self, request, sampling):
        if self.delay:
            await _asyncio.sleep(self.delay)
        n = min(self.completion_tokens, sampling.max_tokens)
        words = sum(self.count_tokens(t) for m in request["messages"] for t in message_texts(m))
        prompt = 10 + 4 * len(request["messages"]) + words + (10_000 if self.under_report else 0)
        yield Delta(prompt_tokens=prompt)
        for i in range(n):
            if self.token_delay:
                await _asyncio.sleep(self.token_delay)
            yield Delta("echo" if i == 0 else " echo", 1, finish_reason="length" if i == n - 1 else None)
'''


def stub_engine(**kwargs):
    scope: dict = {}
    exec(STUB_ENGINE_SRC, scope)
    return scope["StubEngine"](**kwargs)
