"""The load part's fast slice: the same checks as ``bench/load.py`` (reliability/load.py) at smaller sizes.

Concurrent flows: a Sampling Consensus and a ConfidentialCompute ``stack_lifecycle`` at once (two buyers, two
shared nodes), then one ``settlement_run`` per node at once. Concurrent HTTP: 120 chat requests in flight together
against node-1's server, over four stacks whose units cover about a sixth of them. Both use the real localnet, ledger,
Prefect API, CPU engine and HTTP server. Timings are not asserted.
"""

from __future__ import annotations

import asyncio
import copy

import pytest

from atoma_ops.serving.store import NodeStore
from reliability.load import LoadResult, check_http_outcomes, flow_load, http_load


def failures(result: LoadResult) -> str:
    return "; ".join(f"{c.name}: {c.detail}" for c in result.failed())


def test_concurrent_flows_buy_serve_settle_and_claim_each_stack_exactly_once(tmp_path):
    levels = ("sampling_consensus", "confidential_compute")  # between them: every claim path (NoSecurity's too)
    result = asyncio.run(
        flow_load(tmp_path, flows=2, requests_per_flow=1, max_tokens=1, levels=levels, nodes=("node-1", "node-2"))
    )

    assert result.ok, failures(result)
    calls = result.figures["transactions_by_entry_function"]
    assert calls["acquire_new_stack_entry"] == 2 and calls["register_node_entry"] == 2
    assert calls["try_settle_stack"] == 1  # the ConfidentialCompute stack is claimed without a ticket
    assert calls["claim_funds_for_stacks"] == 1 and calls["claim_funds"] >= 1
    assert calls["submit_stack_settlement_attestation"] >= 1
    assert len(result.checks) >= 10


def test_concurrent_requests_never_lose_an_update_nor_over_serve(tmp_path):
    result = asyncio.run(http_load(tmp_path, requests=120, stacks=4, max_tokens=1, served_fraction=0.15))

    assert result.ok, failures(result)
    f = result.figures
    assert f["served"] + f["refused"] == 120 and f["served"] > 0 and f["refused"] > 0

    # the checks catch what they are meant to: a response the history does not hold, a refusal that was charged
    raw = result.raw
    tampered = copy.deepcopy(raw["outcomes"])
    served = next(o for o in tampered if o["status"] == 200)
    served["body"]["choices"][0]["message"]["content"] += " (not what was recorded)"
    refused = next(i for i, o in enumerate(tampered) if o["status"] == 425)
    tampered[refused] = {**copy.deepcopy(served), "stack": tampered[refused]["stack"]}
    again = LoadResult("tampered", {}, {})
    with NodeStore(NodeStore.path_for(raw["home"], "node-1")) as store:
        check_http_outcomes(again, store, raw["bodies"], tampered, raw["stack_ids"], raw["units"])
    broken = {c.name for c in again.failed()}
    assert "every 200 is in the durable history with matching hashes and units" in broken
    assert "no lost update: store usage = sum of the 200s' charges = history" in broken


def test_past_max_pending_the_node_answers_429_and_charges_nothing(tmp_path):
    """The same burst on the stub engine with ``max_pending`` 12 for 48 requests (units for half of them): the
    engine holds every request for 2 s after the first, so the rest arrive while the node is full and must be
    answered 429 with Retry-After, nothing recorded; /metrics agrees with what the clients got."""
    from atoma_ops.testing.stub_engine import StubEngine

    class Held(StubEngine):
        """Every stream waits until ``hold_s`` after the first one started: the node stays full meanwhile."""

        def __init__(self, hold_s: float):
            super().__init__()
            self.hold_s, self.open = hold_s, None

        async def stream(self, request, sampling):
            if self.open is None:
                self.open = asyncio.Event()
                asyncio.get_running_loop().call_later(self.hold_s, self.open.set)
            await asyncio.wait_for(self.open.wait(), 60)
            async for delta in super().stream(request, sampling):
                yield delta

    result = asyncio.run(http_load(tmp_path, requests=48, stacks=2, max_tokens=2, served_fraction=0.5, max_pending=12,
                                   engine=Held(2.0)))
    assert result.ok, failures(result)
    f = result.figures
    assert f["served"] + f["refused"] + f["overloaded"] == 48 and f["overloaded"] > 0 and f["served"] > 0
    assert result.sizes["max_pending"] == 12
    assert any(c.name.startswith("GET /metrics") and c.ok for c in result.checks)

    # the 429 checks catch what they guard: a 429 without Retry-After, a 429 whose request was charged
    raw = result.raw
    tampered = copy.deepcopy(raw["outcomes"])
    next(o for o in tampered if o["status"] == 429)["headers"].pop("retry-after")
    next(o for o in tampered if o["status"] == 200)["status"] = 429  # a request in the history, answered 429
    again = LoadResult("tampered", {}, {})
    with NodeStore(NodeStore.path_for(raw["home"], "node-1")) as store:
        check_http_outcomes(again, store, raw["bodies"], tampered, raw["stack_ids"], raw["units"])
    broken = {c.name for c in again.failed()}
    assert {"every 429 is overloaded with a Retry-After", "no refused request recorded or charged"} <= broken


def test_concurrent_registrations_of_one_node_mint_one_badge(localnet_home):
    """Concurrent lifecycles all register the same nodes: callers that all see no NodeBadge yet must not each mint
    one (a node with two badges cannot serve: NodeService refuses to guess which)."""
    from atoma_ops import lifecycle
    from atoma_ops.ledger import Ledger

    async def race() -> list[int]:
        chains = [localnet_home.open() for _ in range(4)]
        try:
            journal = Ledger(localnet_home.path / "ledger.duckdb")
            return await asyncio.gather(*(lifecycle.register_node(c, journal, "node-1") for c in chains))
        finally:
            for c in chains:
                c.localnet.close()

    assert asyncio.run(race()) == [1, 1, 1, 1]
    chain = localnet_home.open()
    try:
        badges = [b for b in chain.localnet.badges(chain.wallet.resolve("node-1")) if b.kind == "NodeBadge"]
    finally:
        chain.localnet.close()
    assert [b.small_id for b in badges] == [1]
