"""Every flow against the localnet, under the session's Prefect test harness.

Money is checked by hand from atoma-protocol.md §4.9/§4.13/§4.14: at a price of 1,000,000 base units per one
million compute units, a NoSecurity stack costs 1 base unit per compute unit; a Sampling Consensus stack costs
1.212 per unit (charge 1200‰ + extra-nodes charge 12‰), and claiming pays the node floor(1.2 × claimed) and refunds
the buyer floor(1.2 × unclaimed).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from atoma_ops.testing import served as kit
from atoma_ops.home import LocalnetHome
from atoma_ops.ledger import Ledger
from atoma_ops.lifecycle import StageError
from atoma_ops.serving.store import NodeStore
from blocks import AtomaNetwork, InferenceEngine
from flows import (
    buy_stack,
    claim,
    create_task,
    ledger_sync,
    mint_usdc,
    register_and_subscribe_node,
    serve_stack,
    settlement_run,
    stack_lifecycle,
    try_settle,
    wait_for_dispute_window,
)

PRICE = 1_000_000


def run(coro):
    return asyncio.run(coro)


def workload(tmp_path, n: int) -> str:
    path = tmp_path / "workload.jsonl"
    prompts = ["What is 2 + 2?", "Name a colour.", "Say hello.", "Count to three."]
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": prompts[i % 4]}], "max_tokens": 4}) + "\n" for i in range(n)))
    return str(path)


def chain_of(network: AtomaNetwork):
    return LocalnetHome(network.home_path).open()


def balances(network: AtomaNetwork, *aliases: str) -> dict[str, int]:
    chain = chain_of(network)
    try:
        return {a: chain.localnet.usdc_balance(chain.wallet.resolve(a)) for a in aliases}
    finally:
        chain.localnet.close()


def event_count(network: AtomaNetwork) -> int:
    chain = chain_of(network)
    try:
        return chain.localnet.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        chain.localnet.close()


def conserved(network: AtomaNetwork) -> bool:
    chain = chain_of(network)
    try:
        t = chain.localnet.total_usdc()
    finally:
        chain.localnet.close()
    return t["minted"] == t["coins"] + t["fee_treasury"] + t["communal_treasury"] + t["collateral"]


async def artifact_keys(*keys: str) -> set[str]:
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))
    return {a.key for a in found}


@pytest.mark.slow
def test_stack_lifecycle_sampling_consensus_end_to_end(network, tmp_path):
    """The whole lifecycle: an attester replays the stack and agrees, the node is paid, the buyer refunded, and a
    second run with the same key changes nothing."""
    summary = run(stack_lifecycle(workload=workload(tmp_path, 3), network=network))

    units = summary["served"]["units_used"]
    assert summary["served"]["served"] == 3 and units > 0
    assert summary["settled"]["claimed_units"] == units
    assert len(summary["settled"]["requested_attestation_nodes"]) == 1  # lottery at 1000‰, one extra node
    (attestation,) = summary["attestations"]
    assert attestation["replay"]["equal"] is True and attestation["disputed"] is False
    node_fee, refund = units * 1200 // 1000, (100_000 - units) * 1200 // 1000
    (claimed,) = summary["claims"]
    assert (claimed["node_fee"], claimed["refund"]) == (node_fee, refund)

    paid = 100_000 * 1212 // 1000
    bal = balances(network, "user", summary["serving_node"])
    assert bal["user"] == 10_000_000 - paid + refund
    assert bal[summary["serving_node"]] == node_fee
    assert conserved(network)

    earnings = {r["node_small_id"]: r for r in summary["earnings"]}
    attester = summary["settled"]["requested_attestation_nodes"][0]
    assert earnings[attester]["attester_credits"] == node_fee  # node_fee / extra_nodes_count (1)
    journal = Ledger(network.home_path / "ledger.duckdb").actions()
    assert journal and {r["status"] for r in journal.values()} <= {"success", "already_done"}
    stack_keys = {f"localnet-stack-{summary['stack_small_id']}-{what}" for what in ("lifecycle", "served", "claim")}
    assert run(artifact_keys("localnet-earnings", *stack_keys)) == {"localnet-earnings", *stack_keys}

    before = event_count(network)
    again = run(stack_lifecycle(workload=workload(tmp_path, 3), network=network))
    assert again["stack_small_id"] == summary["stack_small_id"] and again["claims"] == []
    assert event_count(network) == before  # nothing executed twice
    assert balances(network, "user")["user"] == bal["user"]


@pytest.mark.slow
def test_stage_flows_one_by_one_no_security(network, tmp_path):
    mint = run(mint_usdc("user", 2_000_000, network=network))
    assert (mint.minted, mint.balance_after) == (2_000_000, 2_000_000)
    assert run(mint_usdc("user", 1_500_000, network=network)).minted == 0  # top-up semantics: already there

    task = run(create_task("t1", security_level="no_security", network=network))
    assert run(create_task("t1", security_level="no_security", network=network)) == task  # same key, same task
    node_id = run(register_and_subscribe_node("node-1", task, PRICE, network=network))
    bought = run(buy_stack(task, 50_000, PRICE, key="s1", network=network))
    assert bought["selected_node_id"] == node_id
    stack = bought["stack_small_id"]

    served = run(serve_stack(stack, "node-1", workload(tmp_path, 2), network=network))
    assert served["served"] == 2 and served["units_used"] > 0
    again = run(serve_stack(stack, "node-1", workload(tmp_path, 2), network=network))
    assert again["units_used"] == served["units_used"]  # the history already holds both: nothing served twice
    assert (again["served"], again["served_now"], again["already_served"], again["units_charged"]) == (2, 0, 2, 0)

    (settled,) = run(try_settle([stack], "node-1", network=network))
    assert settled["status"] == "success" and settled["claimed_units"] == served["units_used"]
    with pytest.raises(StageError, match="not claimable yet"):
        run(claim("node-1", [stack], network=network))

    run(wait_for_dispute_window(stack, settled["dispute_settled_at_epoch"], network=network))
    (claimed,) = run(claim("node-1", [stack], network=network))
    units = served["units_used"]
    assert (claimed["node_fee"], claimed["refund"]) == (units, 50_000 - units)
    assert balances(network, "user", "node-1") == {"user": 2_000_000 - 50_000 + (50_000 - units), "node-1": units}
    assert conserved(network)

    report = run(ledger_sync(network=network))
    assert report["events_applied"] > 0 and report["usage_rows"] == 2


# An engine block whose engine is the serving tests' stub (deterministic, instant): put in the process's engine cache
# (tasks.runtime.shared_engine) under the block's key, so the serve-stack flow's tasks use it without loading a model.
STUB = InferenceEngine(kind="openai", model="stub", base_url="http://stub.invalid", batch_size=3)


@pytest.fixture
def stub_engine_block():
    from tasks.runtime import _engines
    from atoma_ops.testing.stub_engine import StubEngine

    _engines[STUB.cache_key()] = StubEngine()
    yield STUB
    _engines.pop(STUB.cache_key(), None)


async def latest_artifact(key: str):
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        (found,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return found


def test_serve_stack_reruns_after_a_refusal_without_serving_or_charging_twice(tmp_path, stub_engine_block):
    """A workload with a refused line (a model the node does not serve) served one task per window of 2: the
    refusal is recorded, and the re-run skips every line, charges nothing and says so in its artifacts."""
    served = kit.served_stacks(tmp_path / "ln", 1, requests_per_stack=0, units=10_000)
    network, (stack,) = AtomaNetwork(home=str(served.home)), served.stack_small_ids
    lines = [{"messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 4} for i in range(5)]
    lines[1]["model"] = "gpt-4o"
    path = tmp_path / "workload.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))

    first = run(serve_stack(stack, "node-1", str(path), network=network, engine=stub_engine_block, window=2))
    assert (first["requests"], first["served"], first["refused"], first["failed"]) == (5, 4, 1, 0)
    assert (first["served_now"], first["refused_now"], first["already_served"], first["already_refused"]) == (4, 1, 0, 0)
    assert first["units_used"] == first["units_charged"] > 0 and first["units_left"] == 10_000 - first["units_used"]
    refused = json.loads(run(latest_artifact(f"ln-stack-{stack}-refused")).data)
    assert [(r["index"], r["type"]) for r in refused] == [(1, "invalid_request_error")]

    again = run(serve_stack(stack, "node-1", str(path), network=network, engine=stub_engine_block, window=2))
    assert (again["served"], again["refused"], again["served_now"], again["refused_now"]) == (4, 1, 0, 0)
    assert (again["already_served"], again["already_refused"], again["units_charged"]) == (4, 1, 0)
    assert again["units_used"] == first["units_used"] and again["workload_id"] == first["workload_id"]
    (table,) = json.loads(run(latest_artifact(f"ln-stack-{stack}-served")).data)
    assert (table["already_served"], table["already_refused"], table["served_now"]) == (4, 1, 0)
    assert run(latest_artifact(f"ln-stack-{stack}-serving")).data == 100.0
    with NodeStore(NodeStore.path_for(served.home, "node-1")) as store:
        assert store.usage(stack).num_requests == 4

    # the same workload sent to node-1 where it already runs (``node_url``), by the stack's owner as before: every
    # line answered from the node's record; then by another address, which the node refuses (not its stack)
    from atoma_ops.serving.node import NodeService
    from atoma_ops.serving.server import BackgroundServer, create_app
    from atoma_ops.testing.stub_engine import StubEngine

    service = asyncio.run(NodeService.open(served.home, "node-1", StubEngine()))
    try:
        with BackgroundServer(create_app(service)) as server:
            remote = run(serve_stack(stack, "node-1", str(path), network=network, engine=stub_engine_block, window=2,
                                     node_url=server.url))
            assert (remote["already_served"], remote["already_refused"], remote["units_charged"]) == (4, 1, 0)
            other = run(serve_stack(stack, "node-1", str(path), network=network, engine=stub_engine_block, window=5,
                                    node_url=server.url, buyer="node-2"))
            assert (other["served"], other["refused_now"], other["already_served"], other["units_charged"]) == (0, 5, 0, 0)
            (why,) = {r["type"] for r in json.loads(run(latest_artifact(f"ln-stack-{stack}-refused")).data)}
            assert why == "stack_not_found"
    finally:
        asyncio.run(service.close())
    with NodeStore(NodeStore.path_for(served.home, "node-1")) as store:
        assert store.usage(stack).num_requests == 4 and store.usage(stack).used_units == first["units_used"]


def test_settlement_run_settles_then_claims_in_one_batch(tmp_path):
    served = kit.served_stacks(tmp_path / "ln", 5)
    network = AtomaNetwork(home=str(served.home))

    # not idle yet, not exhausted: nothing to do
    assert [a for a in run(settlement_run(idle_after_s=3600, network=network)) if a["action"] != "wait"] == []

    first = run(settlement_run(idle_after_s=0, network=network))
    settles = [a for a in first if a["action"] == "try_settle"]
    assert sorted(a["stack_small_id"] for a in settles) == served.stack_small_ids
    assert {a["status"] for a in settles} == {"success"} and {a["units"] for a in settles} == {30}
    assert {a["status"] for a in first if a["action"] == "wait"} == {"waiting"}  # window not passed

    second = run(settlement_run(idle_after_s=0, network=network))
    assert [a for a in second if a["action"] != "wait"] == []  # nothing settled twice

    chain = chain_of(network)
    run(chain.advance_epoch())
    chain.localnet.close()
    third = run(settlement_run(idle_after_s=0, network=network))
    claims = [a for a in third if a["action"].startswith("claim")]
    assert sorted(a["stack_small_id"] for a in claims) == served.stack_small_ids
    assert len({a["digest"] for a in claims}) == 1  # one claim_funds for the batch
    assert {(a["node_fee"], a["refund"]) for a in claims} == {(30, 970)}
    assert balances(network, "node-1")["node-1"] == 5 * 30
    assert conserved(network)
    chain = chain_of(network)
    assert chain.localnet.list_stacks() == []
    chain.localnet.close()
    assert run(artifact_keys("ln-settlement-run")) == {"ln-settlement-run"}


def test_settlement_run_exhausted_and_confidential(tmp_path):
    """Exhausted stacks settle without waiting for idleness; ConfidentialCompute stacks are claimed directly with
    ``claim_funds_for_stacks`` (no ticket, no epoch wait) and stay on chain marked claimed."""
    served = kit.served_stacks(tmp_path / "ln", 3, security_level=1)
    network = AtomaNetwork(home=str(served.home))
    # 30 of 1000 units used: "fewer than 971 left" makes every stack exhausted
    actions = run(settlement_run(idle_after_s=3600, exhausted_below_units=971, network=network))
    assert [a["action"] for a in actions] == ["claim (confidential)"] * 3
    assert {(a["node_fee"], a["refund"]) for a in actions} == {(30, 970)}
    chain = chain_of(network)
    try:
        stacks = chain.localnet.list_stacks()
        assert len(stacks) == 3 and all(s.is_claimed for s in stacks)
        assert chain.localnet.list_tickets() == []
    finally:
        chain.localnet.close()
    assert balances(network, "node-1")["node-1"] == 90
    assert run(settlement_run(idle_after_s=0, network=network)) == []  # claimed stacks are left alone


@pytest.mark.slow
def test_attestation_watch_attests_once_and_fails_loudly_past_the_window(network, tmp_path):
    """node-1 is the only subscriber, so the lottery (at 1000‰) can only draw node-1 itself to attest its own stack
    (draws are with replacement among all eligible nodes, the stack's own included)."""
    from flows import attestation_watch

    run(mint_usdc("user", 1_000_000, network=network))
    task = run(create_task("sc", security_level="sampling_consensus", cross_validation_probability_permille=1000, network=network))
    run(register_and_subscribe_node("node-1", task, PRICE, network=network))

    def settled_stack(key: str) -> int:
        stack = run(buy_stack(task, 10_000, PRICE, key=key, network=network))["stack_small_id"]
        run(serve_stack(stack, "node-1", workload(tmp_path, 2), network=network))
        (settled,) = run(try_settle([stack], "node-1", network=network))
        assert settled["requested_attestation_nodes"] == [1]
        return stack

    first = settled_stack("a")
    (done,) = run(attestation_watch(nodes=["node-1"], network=network))
    assert (done["stack_small_id"], done["status"], done["disputed"]) == (first, "success", False)
    assert run(attestation_watch(nodes=["node-1"], network=network)) == []  # already attested: nothing to do

    second = settled_stack("b")
    chain = chain_of(network)
    run(chain.advance_epoch(2))  # past E + 1: the window has closed
    chain.localnet.close()
    with pytest.raises(StageError, match="window closed"):
        run(attestation_watch(nodes=["node-1"], network=network))
    assert run(artifact_keys("localnet-attestation-watch-problems")) == {"localnet-attestation-watch-problems"}
    ticket = chain_of(network)
    try:
        assert ticket.localnet.get_ticket(second).already_attested_nodes == []
    finally:
        ticket.localnet.close()
