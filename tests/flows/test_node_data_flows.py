"""The flows' by-URL paths (under the session's Prefect test harness): ``ledger-sync`` with ``node_urls`` imports a
node's usage from its server, and ``attest`` with ``history_url`` reads the serving node's history from it. The
node's real HTTP server on 127.0.0.1, the real localnet, store and DuckDB; the openai stand-in as engine."""

from __future__ import annotations

import asyncio

from atoma_ops.ledger import Ledger
from atoma_ops.lifecycle import try_settle_stack
from atoma_ops.serving.node import NodeService
from blocks import AtomaNetwork, InferenceEngine
from flows import attest, ledger_sync
from tests.serving.node_data_kit import node_world, upstream  # noqa: F401
from tests.serving.test_kit import journal, net  # noqa: F401


def test_ledger_sync_by_url_and_attest_by_url(node_world, upstream, tmp_path):
    w = node_world
    network = AtomaNetwork(home=str(w.home.path))

    report = asyncio.run(ledger_sync(network=network, node_urls=[w.url]))
    assert report["usage_rows"] == 6 and report["node_imports"][0]["node_small_id"] == 1
    local = Ledger(tmp_path / "local.duckdb")
    local.import_node_usage(w.home.path)
    synced = Ledger(report["ledger"])
    assert synced.usage().reset_index(drop=True).equals(local.usage().reset_index(drop=True))
    assert asyncio.run(ledger_sync(network=network, node_urls=[w.url]))["usage_rows"] == 0

    a = w.stacks["a"]
    w.net.force_attestation()
    w.net.draws.push(0, 1)  # the attester drawn: node 2
    node1 = w.net.run(NodeService.open(w.home.path, "node-1", w.engine, chain=w.net.chain))
    try:
        settled = w.net.run(try_settle_stack(node1, journal(w.home), a))
    finally:
        w.net.run(node1.close())
    assert settled.requested_attestation_nodes == [2]

    engine = InferenceEngine(kind="openai", model=upstream.model, base_url=upstream.base_url)
    done = asyncio.run(attest(a, "node-2", network=network, engine=engine, history_url=w.url))
    assert done["replay"]["equal"] and done["status"] == "success"
    ticket = w.net.get_ticket(a)
    assert ticket.already_attested_nodes == [2]
