"""Helpers for the serving tests (no tests here): a localnet market, nodes, requests, and the stub engine.

The stub engine (:mod:`atoma_ops.testing.stub_engine`) is only for properties that do not depend on the model
(metering under two processes, crash safety in a subprocess that must start fast); everything else runs the real
CPU engine (the session ``engine`` fixture of tests/serving/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from atoma_ops.serving.node import NodeService
from atoma_ops.testing.stub_engine import StubEngine
from tests.chain.chainkit import CONFIDENTIAL, NO_SECURITY, SAMPLING, Net

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


def try_settle(net: Net, node: NodeService, home, stack_small_id: int):
    """The node's try-settle, as the CLI and the flows make it (``lifecycle.try_settle_stack``, journaled in the
    home's ledger)."""
    from atoma_ops import lifecycle

    return net.run(lifecycle.try_settle_stack(node, journal(home), stack_small_id))


def attest(net: Net, node: NodeService, home, stack_small_id: int, history):
    """The node's attestation of ``history`` (``lifecycle.attest_stack``: replay, then submit, journaled)."""
    from atoma_ops import lifecycle

    return net.run(lifecycle.attest_stack(node, journal(home), stack_small_id, history))


def journal(home):
    """The intent journal of a localnet home: its ledger."""
    from atoma_ops.ledger.api import Ledger, default_path

    return Ledger(default_path(home.path))


# Subprocess scripts start with this line to have the stub engine.
STUB_ENGINE_SRC = "from atoma_ops.testing.stub_engine import StubEngine\n"


def stub_engine(**kwargs) -> StubEngine:
    return StubEngine(**kwargs)
