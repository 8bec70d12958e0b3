"""Runs an operator can read in the Prefect UI: names that say what a run acts on, tags to filter by, artifact keys
per network and stack (a second localnet never replaces the first one's card), INFO logs with the facts, no hook
noise, USDC shown as USDC, a timeout on everything; and the ephemeral API's start-up timeout for entry points."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.logging.handlers import APILogHandler

import flows
import tasks
from atoma_ops.testing import served as kit
from blocks import AtomaNetwork
from flows import claim, try_settle
from tasks.labels import RunLabels, artifact_key, network_label

ROOT = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def info_logs():
    """The session runs with PREFECT_LOGGING_LEVEL=WARNING; these tests read the runs' INFO logs."""
    logger = logging.getLogger("prefect")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(level)


async def flow_run_facts(flow_run_id) -> dict:
    await APILogHandler.aflush()
    async with get_client() as client:
        (flow_run,) = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        task_runs = await client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return {
        "name": flow_run.name,
        "tags": set(flow_run.tags),
        "task_runs": {t.name: set(t.tags) for t in task_runs},
        "logs": [(log.level, log.message) for log in logs],
    }


async def latest_artifact(key: str):
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return found[0] if found else None


def test_settle_and_claim_runs_say_what_they_act_on(tmp_path, info_logs):
    """Two localnets, each with stack 1 of node-1: each run is named and tagged for its stack and network, and each
    network keeps its own artifact cards. Amounts by hand (kit.served_stacks): 30 of 1000 units used at 1 base unit
    a unit: the node is paid 30 base units (0.000030 USDC), the buyer refunded 970."""
    homes = {"ops-localnet": tmp_path / "ops-localnet", "other-localnet": tmp_path / "other-localnet"}
    for home in homes.values():
        served = kit.served_stacks(home, 1)
        assert served.stack_small_ids == [1]
    ops, other = (AtomaNetwork(home=str(h)) for h in homes.values())

    state = run(try_settle([1], "node-1", network=ops, return_state=True))
    assert state.is_completed()
    facts = run(flow_run_facts(state.state_details.flow_run_id))
    assert facts["name"] == "try-settle stack-1 node-1"
    assert {"network:ops-localnet", "stack:1", "node:node-1"} <= facts["tags"]
    assert set(facts["task_runs"]) == {"try-settle stack-1 node-1"}
    assert all({"network:ops-localnet", "stack:1", "node:node-1"} <= tags for tags in facts["task_runs"].values())
    assert any(level == logging.INFO and "stack 1: success, 30 units claimed" in m for level, m in facts["logs"])

    run(try_settle([1], "node-1", network=other))
    for network in (ops, other):
        chain = kit.opened(Path(network.home))
        with chain as c:
            run(c.advance_epoch())

    state = run(claim("node-1", [1], network=ops, return_state=True))
    assert state.is_completed()
    facts = run(flow_run_facts(state.state_details.flow_run_id))
    assert facts["name"] == "claim stack-1 node-1"
    assert {"network:ops-localnet", "stack:1", "node:node-1"} <= facts["tags"]
    assert "claim-funds stack-1 node-1" in facts["task_runs"]
    messages = [m for _, m in facts["logs"]]
    assert any("node fee 0.000030 USDC (30 base units), buyer refund 0.000970 USDC (970 base units)" in m for m in messages)
    assert not any("Running hook" in m for m in messages), messages

    (row,) = json.loads(run(latest_artifact("ops-localnet-stack-1-claim")).data)
    assert (row["node_fee"], row["refund"]) == ("0.000030 USDC (30 base units)", "0.000970 USDC (970 base units)")

    run(claim("node-1", [1], network=other))  # the other localnet's claim: its own card, the first one kept
    assert run(latest_artifact("other-localnet-stack-1-claim")) is not None
    (row,) = json.loads(run(latest_artifact("ops-localnet-stack-1-claim")).data)
    assert row["status"] == "success"
    assert run(latest_artifact("claim")) is None  # no card shared by every network and stack


def test_run_labels_and_artifact_keys():
    labels = RunLabels("claim-funds", stack="stack_small_ids", node="node")
    params = {"network": AtomaNetwork(home="data/demo-localnet"), "node": "node-3", "stack_small_ids": [12]}
    assert labels.name_of(params) == "claim-funds stack-12 node-3"
    assert labels.tags_of(params) == ["network:demo-localnet", "stack:12", "node:node-3"]
    many = {**params, "stack_small_ids": list(range(1, 41))}
    assert labels.name_of(many) == "claim-funds stacks-1..40 (40) node-3"
    assert labels.tags_of(many) == ["network:demo-localnet", "node:node-3"]  # 40 stack tags would drown the list
    address = "0x" + "ab" * 32
    assert labels.name_of({**params, "node": address}) == "claim-funds stack-12 0xabab…abab"
    scheduled = RunLabels("settlement-run", network="network", node="nodes")
    assert scheduled.name_of({"network": {"home": "data/localnet"}, "nodes": None}) == "settlement-run localnet"
    assert network_label(AtomaNetwork(kind="sui", sui_preset="testnet")) == "testnet"
    assert network_label({"kind": "sui", "sui_preset": "custom", "db_id": "0x12AB34cd5678"}) == "sui-12ab34cd"
    key = artifact_key(AtomaNetwork(home="data/My_Localnet"), "node", "Node_3", "task", 1)
    assert key == "my-localnet-node-node-3-task-1" and re.fullmatch(r"[a-z0-9-]+", key)


def every(package, kind) -> dict:
    """Every ``kind`` (Flow, Task) defined in the package's modules."""
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found.update({f"{info.name}.{n}": v for n, v in vars(module).items() if isinstance(v, kind)})
    return found


def test_every_flow_and_task_has_a_timeout_and_a_run_name():
    from prefect import Flow, Task

    all_flows, all_tasks = every(flows, Flow), every(tasks, Task)
    assert {"stages.claim", "settlement.settlement_run"} <= set(all_flows) and "node.claim_tickets" in all_tasks
    for name, f in all_flows.items():
        assert f.timeout_seconds and f.flow_run_name, name
    for name, t in all_tasks.items():
        assert t.timeout_seconds and t.task_run_name, name
    # the ordinary process has no step hooks (no "Running hook" lines); the failpoint harness turns them on
    assert not tasks.claim_tickets.on_running_hooks and not flows.claim.on_completion_hooks


PROBE = (
    "import prefect, blocks, flows\n"
    "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as S\n"
    "import tasks.runtime as r\n"
    "print(S.value(), bool(r.STEP_HOOKS))\n"
)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "120 False"),  # Prefect imported first (blocks), then flows: the ephemeral API gets 120 s, not 20
        # the user's choice stands; the failpoint harness's processes keep their step hooks
        ({"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "45", "ATOMA_OPS_STEP_HOOKS": "1"}, "45 True"),
    ],
)
def test_entry_points_give_the_ephemeral_api_time_to_start(env, expected):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_SERVER_EPHEMERAL", "ATOMA_OPS_"))}
    clean.pop("PREFECT_API_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected
