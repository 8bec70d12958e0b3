"""Reservation leases (atoma_ops.serving.store, renewed by atoma_ops.serving.node): a request that runs longer than
its lease keeps its reservation, because the node renews it while the request runs; another process that looks for
stale reservations all that time finds none."""

from __future__ import annotations

import asyncio

from atoma_ops.serving.store import RESERVATION_LEASE_ENV, NodeStore
from atoma_ops.testing.serve_all import serve_all
from tests.serving.test_kit import NO_SECURITY, PRICE, ask, market, net, open_node, stub_engine  # noqa: F401


def test_a_request_longer_than_its_lease_keeps_its_reservation(net, localnet_home, monkeypatch):
    monkeypatch.setenv(RESERVATION_LEASE_ENV, "0.3")  # renewed every 0.1 s
    t = market(net, NO_SECURITY)
    s = net.buy(t, 1_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", stub_engine(delay=1.5, completion_tokens=3))
    watcher = NodeStore(NodeStore.path_for(localnet_home.path, "node-1"))  # another holder, like another process
    seen: list[tuple[int, int]] = []  # (released, in flight) at each look

    async def main():
        serving = asyncio.create_task(serve_all(node, s, [ask(0, 3)]))
        while not serving.done():  # 1.5 s of engine time: five leases' worth
            released = await asyncio.to_thread(watcher.recover)
            seen.append((released, watcher.usage(s).in_flight if watcher.usage(s) else 0))
            await asyncio.sleep(0.1)
        return await serving

    try:
        (outcome,) = net.run(main())
    finally:
        watcher.close()
    assert outcome.error is None
    assert sum(r for r, _ in seen) == 0  # never stale while it ran
    assert sum(1 for _, n in seen if n == 1) >= 5  # seen in flight across several lease lengths
    u = node.store.usage(s)
    assert (u.reserved_units, u.in_flight, u.used_units, u.num_requests) == (0, 0, outcome.units, 1)
    net.run(node.close())
