"""``--network``: the CLI opens chains through the factory the Prefect blocks use (``atoma_ops.connect``), so the
db, usdc, stack and ledger commands reach Sui too. Sui here is the loopback Sui node (``atoma_ops.testing.sui``, a
test double on 127.0.0.1 that serves Sui's gRPC API over a localnet chain file: no public network is reachable)."""

from __future__ import annotations

import pytest

from atoma_ops.chain.localnet.engine import CHAIN_FILE, Localnet
from atoma_ops.testing.sui import BackgroundLoopbackNode


@pytest.fixture
def sui(cli):
    net = Localnet(cli.home / CHAIN_FILE)
    ids = ["--package-id", net.package_id, "--db-id", net.db_id, "--usdc-coin-type", net.usdc_type]
    net.close()
    with BackgroundLoopbackNode(cli.home / CHAIN_FILE) as node:
        yield ["--network", "custom", "--sui-endpoint", node.url, *ids]


def test_db_and_usdc_commands_reach_sui(cli, sui):
    cli.ok("usdc", "mint", "--amount", "3000000", "--to", "user")
    task = cli.ok(*sui, "db", "create-task-entry", "--role", "0", "--is-public", address="admin")
    assert task["status"] == "success"
    assert cli.ok(*sui, "db", "get-task", "--task-small-id", "1")["role"] == 0
    # what was written over Sui is on the chain the localnet commands read
    assert cli.ok("db", "get-task", "--task-small-id", "1")["task_small_id"] == 1
    assert cli.ok(*sui, "usdc", "balance", "user")["base_units"] == 3_000_000
    node = cli.ok(*sui, "db", "register-node", address="node-1")
    assert node["status"] == "success"
    assert cli.ok("db", "get-node", "--node-small-id", "1")["node_small_id"] == 1
    # the ledger indexes the same events over Sui's event queries
    synced = cli.ok(*sui, "ledger", "sync")
    assert synced["events_applied"] >= 3 and cli.ok("ledger", "sync")["events_applied"] == 0


def test_what_only_the_localnet_has_is_refused_by_name(cli, sui):
    for argv in (["usdc", "mint", "--amount", "1"], ["localnet", "advance-epoch"], ["localnet", "status"]):
        err = cli.fail(*sui, *argv)
        assert err["kind"] == "LocalnetOnly", (argv, err)
    err = cli.fail("--network", "mainnet", "db", "get-task", "--task-small-id", "1")
    assert err["kind"] == "InvalidArgument" and "--network" in err["message"]
    err = cli.fail("--network", "custom", "db", "get-task", "--task-small-id", "1")  # no endpoint, no ids
    assert err["kind"] == "InvalidArgument"
