"""A node serving on 127.0.0.1 with requests already served, for the tests of its signed reads (usage, history)
and of the ledger's import over HTTP: the real localnet and store, the node's real HTTP server, the openai
stand-in as engine (deterministic answers, no model to load). No tests here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from atoma_ops.client import RequestSigner
from atoma_ops.client.node_data import NodeDataClient
from atoma_ops.serving.node import NodeService
from atoma_ops.serving.server import BackgroundServer, create_app
from atoma_ops.testing.openai_standin import standin
from atoma_ops.testing.serve_all import serve_all
from tests.serving.test_kit import PRICE, SAMPLING, ask, market, net  # noqa: F401

__all__ = ["NodeWorld", "node_world", "upstream", "net", "reader", "run_client"]


@pytest.fixture(scope="module")
def upstream():
    with standin() as server:
        yield server


@dataclass
class NodeWorld:
    net: Any
    home: Any
    service: NodeService
    server: BackgroundServer
    stacks: dict[str, int]
    engine: Any

    @property
    def url(self) -> str:
        return self.server.url

    def serve(self, stack: str, requests: list[dict]) -> None:
        outcomes = self.net.run(serve_all(self.service, self.stacks[stack], requests))
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]


@pytest.fixture
def node_world(net, localnet_home, upstream):
    """node-1 (small id 1) serving a SamplingConsensus task on 127.0.0.1, node-2 and node-3 subscribed too; stacks
    ``a`` and ``b`` (the user's) and ``c`` (node-3's), all sold to node-1. Served, in this order: b0, a0, b1, a1,
    a2 (so serving order is not stack order), and c0."""
    t = market(net, SAMPLING, nodes=("node-1", "node-2", "node-3"))
    net.mint("node-3", 10_000_000)
    stacks = {"a": net.buy(t, 50_000, PRICE, draw=0), "b": net.buy(t, 50_000, PRICE, draw=0),
              "c": net.buy(t, 50_000, PRICE, draw=0, sender="node-3")}
    engine = upstream.client()
    chain = localnet_home.open()  # the server thread's own connection (the test's is bound to its event loop)
    service = net.run(NodeService.open(localnet_home.path, "node-1", engine, chain=chain))
    server = BackgroundServer(create_app(service)).start()
    world = NodeWorld(net, localnet_home, service, server, stacks, engine)
    world.serve("b", [ask(0)])
    world.serve("a", [ask(1)])
    world.serve("b", [ask(2)])
    world.serve("a", [ask(3), ask(4)])
    world.serve("c", [ask(5)])
    yield world
    server.stop()
    net.run(service.close())
    net.run(chain.close())


def reader(net, alias: str) -> RequestSigner:
    """``alias``'s signer from the localnet wallet (it holds every test key)."""
    return RequestSigner(net.chain.wallet, alias)


def run_client(url: str, signer: Any, body):
    """``await body(client)`` with a fresh NodeDataClient of ``url`` in its own event loop (the tests' chain loop
    is not running between calls)."""

    async def main():
        async with NodeDataClient(url, signer) as client:
            return await body(client)

    return asyncio.run(main())
