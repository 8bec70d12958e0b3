"""The deployments of ``prefect.yaml``, for real: a Prefect server, the ``atoma-ops`` process work pool, ``prefect
deploy --all`` from the repository root, a worker, and two runs of ``settlement-run`` against a localnet.

Everything Prefect here runs in subprocesses with their own ``PREFECT_HOME`` and an explicit ``PREFECT_API_URL``: the
session's test harness (autouse, in-process) is not involved; the server is the test process's shared one
(``prefect_server``), empty when the test starts. The server runs without its scheduler, so the
scheduled deployments (``ledger-sync``, ``attestation-watch``, ``balance-watch``, the hourly ``settlement-run``) never start a run with
their default parameters (the repository's own ``data/localnet``); the only runs are the two this test creates.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from atoma_ops.testing import served as kit
from atoma_ops.testing.served import NODE, PRICE, UNITS, served_stacks
from tests.flows.prefect_server import (
    PREFECT,
    ROOT,
    PrefectServer,
    cli as _cli,
    start as _start,
    stop as _stop,
    tail as _tail,
)

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
N_STACKS = 3
REQUESTS_PER_STACK = 2  # the kit's default
UNITS_PER_REQUEST = 15  # 10 prompt + 5 completion tokens per recorded response


def _run_settlement(home: Path, env: dict[str, str], api: httpx.Client, worker_log: Path, timeout: float = 120,
                    cli: bool = True) -> dict:
    """``prefect deployment run settlement-run/settlement-run`` against ``home`` (``cli=False``: the same run
    created through the API, as that command creates it, without the CLI's start-up); wait for a terminal state."""
    if cli:
        out = _cli(
            "deployment", "run", "settlement-run/settlement-run",
            "--param", f"network={json.dumps({'home': str(home)})}",
            "--param", "idle_after_s=0",
            env=env,
        )
        match = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert match, out
        flow_run_id = match.group(1)
    else:
        dep = api.get("/deployments/name/settlement-run/settlement-run").raise_for_status().json()
        flow_run_id = api.post(f"/deployments/{dep['id']}/create_flow_run", json={
            "parameters": {"network": {"home": str(home)}, "idle_after_s": 0},
        }).raise_for_status().json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/flow_runs/{flow_run_id}").raise_for_status().json()
        if run["state_type"] in TERMINAL:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(
            f"flow run {flow_run_id} still {run['state_type']} after {timeout} s:\n{_tail(worker_log)}"
        )
    assert run["state_type"] == "COMPLETED", f"{run['state']}\n{_tail(worker_log)}"
    return run


def _chain_state(home: Path) -> dict:
    with kit.opened(home) as chain:
        ln = chain.localnet
        return {
            "stacks": [s.stack_small_id for s in ln.list_stacks()],
            "tickets": {t.stack_small_id: t for t in ln.list_tickets()},
            "node": ln.usdc_balance(chain.wallet.resolve(NODE)),
            "user": ln.usdc_balance(chain.wallet.resolve("user")),
        }


@pytest.mark.slow
def test_settlement_run_deployment_settles_then_claims(prefect_server: PrefectServer, tmp_path):
    home = tmp_path / "localnet"
    env, api = prefect_server.env, prefect_server.api
    worker_log = tmp_path / "worker.log"

    with ExitStack() as stack:
        served = served_stacks(home, N_STACKS, requests_per_stack=REQUESTS_PER_STACK)
        before = _chain_state(home)
        assert sorted(before["stacks"]) == sorted(served.stack_small_ids) and not before["tickets"]

        # the pool as `prefect work-pool create atoma-ops --type process` makes it, through the API (the CLI's
        # start-up costs seconds; the pool is not what this test is about)
        from prefect.workers.process import ProcessWorker

        api.post("/work_pools/", json={
            "name": "atoma-ops", "type": "process", "base_job_template": ProcessWorker.get_default_base_job_template(),
        }).raise_for_status()
        # the worker starts (a few seconds of imports) while the deployments are created
        worker = _start([*PREFECT, "worker", "start", "--pool", "atoma-ops"], env, worker_log)
        stack.callback(_stop, worker)
        _cli("deploy", "--all", env=env)

        # what prefect.yaml declares is what the server holds
        deployments = {
            d["name"]: d for d in api.post("/deployments/filter", json={}).raise_for_status().json()
        }
        assert set(deployments) == {"stack-lifecycle", "settlement-run", "attestation-watch", "ledger-sync", "balance-watch"}
        for d in deployments.values():
            assert d["work_pool_name"] == "atoma-ops"
            # no machine path in prefect.yaml: `prefect deploy` records the folder it ran in
            assert d["pull_steps"] == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
            ]
        schedules = {name: [s["schedule"] for s in d["schedules"]] for name, d in deployments.items()}
        assert schedules["stack-lifecycle"] == []
        assert schedules["settlement-run"][0]["cron"] == "0 * * * *"
        assert schedules["attestation-watch"][0]["interval"] == 600
        assert schedules["ledger-sync"][0]["interval"] == 300
        assert schedules["balance-watch"][0]["interval"] == 900
        for name in ("settlement-run", "attestation-watch"):
            assert deployments[name]["global_concurrency_limit"]["limit"] == 1
            assert deployments[name]["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        assert deployments["ledger-sync"]["global_concurrency_limit"] is None
        # the chain-only runs on the queue `shared` (one worker, the ledger's single writer), the rest on `default`
        queues = {name: d["work_queue_name"] for name, d in deployments.items()}
        assert queues == {"ledger-sync": "shared", "balance-watch": "shared", "stack-lifecycle": "default",
                          "settlement-run": "default", "attestation-watch": "default"}

        # first run: every stack is idle (idle_after_s=0), so each is try-settled; nothing is claimable yet
        first = _run_settlement(home, env, api, worker_log)
        assert first["parameters"]["network"] == {"home": str(home)}
        settled = _chain_state(home)
        used = REQUESTS_PER_STACK * UNITS_PER_REQUEST
        assert sorted(settled["tickets"]) == sorted(served.stack_small_ids)
        assert all(t.num_claimed_compute_units == used for t in settled["tickets"].values())
        assert sorted(settled["stacks"]) == sorted(served.stack_small_ids)
        assert settled["node"] == before["node"] == 0

        # the dispute window passes; the second run claims every ticket (the CLI's path was the first run's)
        assert kit.advance_epoch(home) == 1
        _run_settlement(home, env, api, worker_log, cli=False)

    after = _chain_state(home)
    fee = used * PRICE // 1_000_000  # NoSecurity: the node is paid for the units it served...
    refund = UNITS * PRICE // 1_000_000 - fee  # ...and the user gets the rest of the stack back
    assert (fee, refund) == (30, 970)
    assert after["stacks"] == [] and after["tickets"] == {}
    assert after["node"] == N_STACKS * fee
    assert after["user"] == before["user"] + N_STACKS * refund
    assert worker.poll() is not None
