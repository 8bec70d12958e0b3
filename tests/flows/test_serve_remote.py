"""Serving through the flows, to a node that already runs (``node_url``), and a workload the flow cannot read.

The running node is node-1's real HTTP server (``atoma_ops.serving.server``) on 127.0.0.1 around the stub engine
(``atoma_ops.testing.stub_engine``: deterministic, instant; the subject here is where requests go, not the model).
"""

from __future__ import annotations

import asyncio
import json

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prometheus_client.parser import text_string_to_metric_families

from atoma_ops.home import LocalnetHome
from atoma_ops.serving.node import NodeService
from atoma_ops.serving.server import BackgroundServer, create_app
from atoma_ops.serving.store import NodeStore
from atoma_ops.serving.workload import WorkloadError
from atoma_ops.testing.stub_engine import StubEngine
from blocks import AtomaNetwork, InferenceEngine
from flows import serve_stack, stack_lifecycle

PRICE = 1_000_000
#: an engine block nothing answers for (port 9 of 127.0.0.1): serving anywhere but at ``node_url`` fails every line
NOWHERE = InferenceEngine(kind="openai", model="nowhere", base_url="http://127.0.0.1:9/v1", batch_size=2)


def served_by(url: str) -> float:
    """Requests the server at ``url`` served, from its Prometheus counter (``GET /metrics``)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "atoma_chat_completions_num_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("outcome") == "served"
    )


async def register(home, alias: str) -> None:
    chain = LocalnetHome(home).open()
    try:
        await chain.register_node_entry(chain.wallet.resolve(alias))
    finally:
        await chain.close()


def test_a_lifecycle_with_node_url_sends_its_workload_to_that_node(network: AtomaNetwork, tmp_path):
    """node-1 runs before the lifecycle starts (as ``atoma-ops node serve`` does, on the network's home); the
    lifecycle, given its URL, sends the workload there: that server counts every request, its store holds them, and
    try-settle claims exactly what it recorded. The lifecycle's own engine block answers nothing, so a workload
    served anywhere else would have failed line by line."""
    asyncio.run(register(network.home_path, "node-1"))  # a node serves only once it holds a NodeBadge
    lines = [{"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 4} for i in range(3)]
    path = tmp_path / "workload.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))

    service = asyncio.run(NodeService.open(network.home_path, "node-1", StubEngine()))
    try:
        with BackgroundServer(create_app(service)) as server:
            assert served_by(server.url) == 0
            summary = asyncio.run(stack_lifecycle(
                key="remote", workload=str(path), security_level="no_security", nodes=["node-1"],
                node_prices=[PRICE], bid_price=PRICE, num_compute_units=10_000, wait_and_claim=False,
                engine=NOWHERE, node_url=server.url, network=network,
            ))
            assert served_by(server.url) == 3
    finally:
        asyncio.run(service.close())

    stack, served = summary["stack_small_id"], summary["served"]
    assert summary["serving_node"] == "node-1"
    assert (served["served"], served["served_now"], served["failed"], served["refused"]) == (3, 3, 0, 0)
    # the stub's prompt is 10 + 4 per message + its words (2) = 16 tokens, its answer 3: 19 units a request
    assert served["units_used"] == served["units_charged"] == 3 * 19
    with NodeStore(NodeStore.path_for(network.home_path, "node-1")) as store:
        usage = store.usage(stack)
        history = store.history(stack)
    assert (usage.num_requests, usage.used_units) == (3, 3 * 19)
    assert sorted(r["messages"][0]["content"] for r in history.requests) == [r["messages"][0]["content"] for r in lines]
    assert history.model == "stub"  # answered by the running node's engine
    assert summary["settled"]["claimed_units"] == 3 * 19  # try-settle committed to what the running node recorded


def test_a_workload_that_is_not_utf8_fails_the_serve_flow_at_once_by_name(network: AtomaNetwork, tmp_path):
    """The flow reads the workload itself (no CLI checked it first): a named, terminal error naming the file and
    line, raised before any task runs, so nothing is retried and nothing served."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        b'{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    )
    state = asyncio.run(serve_stack(1, "node-1", str(path), network=network, return_state=True))
    assert state.is_failed()
    try:
        state.result(raise_on_failure=True)
    except WorkloadError as exc:
        # '{"messages": [{"role": "user", "content": "caf' is 46 characters: the Latin-1 é is the 47th
        assert str(exc) == f"{path}:2: not UTF-8 (byte 0xe9 at column 47)"
    else:  # pragma: no cover - the run must fail with the named error
        raise AssertionError("the run did not fail with WorkloadError")

    async def attempts() -> tuple[int, int]:
        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        return run.run_count, len(tasks)

    assert asyncio.run(attempts()) == (1, 0)  # one attempt of the flow, no serve-batch task started (or retried)
