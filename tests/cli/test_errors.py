"""Failures through the CLI: the JSON error shape per abort, bad input (exit 1), usage errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.cli import app, main

from tests.cli.clikit import Cli, proof

U64_MAX = 2**64 - 1


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Cli:
    """Task 1 public (node 2 subscribed at 1_000_000), task 2 private; stacks 1 and 2 (user, node 2), stack 1
    settled in epoch 0; the user's 2 USDC are spent. Aborts change nothing, so the tests below share it."""
    c = Cli(tmp_path_factory.mktemp("scenario") / "home")
    c.aliases = c.ok("localnet", "init", "--seed", "1")["aliases"]
    c.ok("usdc", "mint", "--amount", "2000000", "--to", "user")
    c.ok("db", "create-task-entry", "--role", "0", "--is-public")
    c.ok("db", "create-task-entry", "--role", "1", "--is-private")
    c.ok("db", "register-node", address="node-1")
    c.ok("db", "register-node", address="node-2")
    c.ok("db", "subscribe-node-to-task", "--task-small-id", "1", "--price-per-one-million-compute-units", "1000000", address="node-2")
    for _ in range(2):
        c.ok("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "1000000", "--price", "1000000", address="user")
    c.ok(
        "db", "try-settle-stack", "--stack-small-id", "1", "--num-claimed-compute-units", "100",
        "--committed-stack-proof", proof("p"), "--stack-merkle-leaf", proof("l"), address="node-2",
    )
    return c


def settle(stack: int, units: int = 10, proof_hex: str | None = None, leaf_hex: str | None = None) -> list[str]:
    return [
        "db", "try-settle-stack", "--stack-small-id", str(stack), "--num-claimed-compute-units", str(units),
        "--committed-stack-proof", proof_hex or proof("p"), "--stack-merkle-leaf", leaf_hex or proof("l"),
    ]


ABORTS = [
    # (signer, argv, module, code, name) — codes from atoma-protocol.md §1.1
    ("node-1", settle(1), "db", 312012023, "ENodeNotSelectedForStack"),
    ("node-2", ["db", "claim-funds", "--settled-ticket-ids", "1"], "db", 312012032, "EStackDisputePeriodIsNotOver"),
    ("node-2", settle(1), "db", 312012024, "EStackInSettlementDispute"),
    ("node-2", settle(2, units=1_000_001), "db", 312012025, "ETooManyComputedUnits"),
    ("node-2", settle(2, proof_hex=proof("p", 31)), "db", 312012041, "EInvalidCommittedStackProof"),
    ("node-2", settle(2, leaf_hex=proof("l", 33)), "db", 312012042, "EInvalidStackMerkleLeaf"),
    ("admin", ["db", "create-task-entry", "--role", "8"], "db", 312012035, "EInvalidTaskRole"),
    ("admin", ["db", "create-task-entry", "--role", "0", "--security-level", "3"], "db", 312012036, "EInvalidSecurityLevel"),
    ("admin", ["db", "create-task-entry", "--role", "0", "--minimum-reputation-score", "101"], "db", 312012043, "EInvalidMinimumReputationScore"),
    ("admin", ["db", "whitelist-nodes-for-task", "--task-small-id", "1", "--nodes-small-ids", "1"], "db", 312012044, "ETaskIsPublic"),
    ("admin", ["db", "set-permille-to-slash-node-on-timeout", "--value", "1001"], "db", 312012007, "ETotalPermilleMustBeLessThan1000"),
    ("node-1", ["db", "subscribe-node-to-task", "--task-small-id", "1", "--price-per-one-million-compute-units", "0"], "db", 312012037, "EInvalidPricePerComputeUnit"),
    ("node-1", ["db", "subscribe-node-to-task", "--task-small-id", "2", "--price-per-one-million-compute-units", "5"], "db", 312012045, "ENodeNotWhitelistedForTask"),
    ("node-2", ["db", "update-node-subscription", "--task-small-id", "2", "--price-per-one-million-compute-units", "5"], "db", 312012018, "ENodeNotSubscribedToTask"),
    ("user", ["db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "1000000", "--price", "1000000"], "db", 312012040, "EInsufficientBalance"),
    ("user", ["db", "acquire-new-stack-entry", "--task-small-id", "99", "--num-compute-units", "1", "--price", "1"], "db", 312012017, "ETaskNotFound"),
    ("user", ["db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "0", "--price", "1"], "db", 312012039, "EInvalidComputeUnits"),
    # a missing table entry aborts in the Sui framework, not with an Atoma code
    ("node-2", ["db", "claim-funds", "--settled-ticket-ids", "99"], "dynamic_field", 1, "EFieldDoesNotExist"),
]


@pytest.mark.parametrize("signer,argv,module,code,name", ABORTS, ids=[a[4] for a in ABORTS])
def test_abort_json_shape_and_nothing_changes(scenario, signer, argv, module, code, name):
    net = Localnet(scenario.home / "chain.sqlite")
    try:
        before = net.state_digest()
        err = scenario.fail(*argv, address=signer)
        assert err == {"kind": "MoveAbort", "module": module, "code": code, "name": name}
        assert net.state_digest() == before
    finally:
        net.close()


def test_abort_human_message_on_stderr(scenario):
    result = scenario.human("db", "claim-funds", "--settled-ticket-ids", "1", address="node-2", code=1)
    assert result.stdout == ""
    assert "EStackDisputePeriodIsNotOver" in result.stderr and "312012032" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_failure_prints_only_the_json_document(scenario):
    result = scenario.invoke(*settle(1), address="node-1", json_out=True)
    assert result.exit_code == 1 and result.stderr == ""
    assert json.loads(result.stdout) == {
        "error": {"kind": "MoveAbort", "module": "db", "code": 312012023, "name": "ENodeNotSelectedForStack"}
    }


def test_other_error_kinds(scenario):
    # u64 overflow in price × units: Sui's ArithmeticError, no code
    err = scenario.fail("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "2", "--price", str(2**63), address="user")
    assert err["kind"] == "ArithmeticError" and "message" in err
    # no AtomaManagerBadge: refused before signing
    err = scenario.fail("db", "set-cross-validation-probability-permille", "--value", "5", address="user")
    assert err["kind"] == "InvalidArgument" and "AtomaManagerBadge" in err["message"]
    # no USDC coin at all
    err = scenario.fail("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "1", "--price", "1", address="node-3")
    assert err["kind"] == "InvalidArgument" and "USDC" in err["message"]
    # a coin id that is no object of the signer's: rejected before execution
    err = scenario.fail("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "1", "--price", "1", "--wallet", "0x1234", address="user")
    assert err["kind"] == "TransactionRejected" and "message" in err
    # a NodeBadge small id the signer does not own
    err = scenario.fail("db", "withdraw-fees", "--node-small-id", "5", address="node-1")
    assert err["kind"] == "InvalidArgument" and "small id 5" in err["message"]


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "get-task", "--task-small-id", "99"],
        ["db", "get-node", "--node-small-id", "99"],
        ["db", "get-stack", "--stack-small-id", "99"],
        ["db", "get-ticket", "--stack-small-id", "2"],
        ["db", "get-subscriptions", "--task-small-id", "99"],
        ["db", "get-transaction", "--digest", "11111111111111111111111111111111"],
        ["db", "list-events", "--cursor-tx-digest", "nope", "--cursor-event-seq", "0"],
    ],
)
def test_missing_objects_are_not_found(scenario, argv):
    err = scenario.fail(*argv)
    assert err["kind"] == "NotFound" and err["message"]


# ------------------------------------------------------------------ bad input: exit 1
def test_negative_and_zero_amounts(cli):
    err = cli.fail("usdc", "mint", "--amount", "-5")
    assert err["kind"] == "InvalidArgument" and "-5" in err["message"]
    assert cli.fail("usdc", "mint", "--amount", "0")["kind"] == "InvalidArgument"
    assert cli.fail("usdc", "mint", "--amount", str(U64_MAX + 1))["kind"] == "InvalidArgument"
    assert cli.ok("localnet", "status")["usdc"]["minted"] == 0
    err = cli.fail("db", "create-task-entry", "--role", "-1")
    assert err["kind"] == "InvalidArgument" and "u16" in err["message"]


@pytest.mark.parametrize("bad", ["0xZZ", "abcd", "0xabc", "", "0x12 34"])
def test_non_hex_proof(cli, bad):
    cli.ok("db", "register-node", address="node-1")
    argv = settle(1)
    argv[argv.index("--committed-stack-proof") + 1] = bad
    err = cli.fail(*argv, address="node-1")
    assert err["kind"] == "InvalidArgument" and "--committed-stack-proof" in err["message"]
    result = cli.human(*argv, address="node-1", code=1)
    assert "--committed-stack-proof" in result.stderr and "Traceback" not in result.stderr


def test_unknown_alias_and_address(cli):
    err = cli.fail("db", "register-node", address="nobody")
    assert err["kind"] == "UnknownAddressError" and "nobody" in err["message"]
    assert cli.fail("usdc", "mint", "--amount", "1", "--to", "nobody")["kind"] == "UnknownAddressError"
    assert cli.fail("usdc", "balance", "0xnothex")["kind"] == "UnknownAddressError"
    # a valid address with no key here cannot sign
    foreign = "0x" + "ab" * 32
    assert cli.fail("db", "register-node", address=foreign)["kind"] == "UnknownAddressError"
    assert cli.ok("db", "badges", address="admin")["badges"][0]["kind"] == "AtomaManagerBadge"
    result = cli.human("usdc", "balance", address="nobody", code=1)
    assert "unknown alias 'nobody'" in result.stderr and "Traceback" not in result.stderr


def test_uninitialised_home(tmp_path):
    c = Cli(tmp_path / "nothing-here")
    for argv in (["usdc", "balance"], ["db", "register-node"], ["localnet", "status"], ["db", "get-task", "--task-small-id", "1"]):
        err = c.fail(*argv)
        assert err["kind"] == "NotFound" and "localnet init" in err["message"]
    assert not (tmp_path / "nothing-here").exists()
    result = c.human("localnet", "advance-epoch", code=1)
    assert "localnet init" in result.stderr and "Traceback" not in result.stderr


def test_other_bad_input(cli):
    cli.ok("db", "register-node", address="node-1")
    err = cli.fail("db", "claim-funds", "--settled-ticket-ids", "1,x", address="node-1")
    assert err["kind"] == "InvalidArgument" and "'x'" in err["message"]
    err = cli.fail("db", "withdraw-fees", "--node-small-id", "1", "--node-badge", "0x1", address="node-1")
    assert err["kind"] == "InvalidArgument"
    err = cli.fail("db", "deprecate-task", "--task-small-id", "1", "--task-badge", "0x1")
    assert err["kind"] == "InvalidArgument"
    for argv in (
        ["db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "1", "--price", "1", "--wallet", "xyz"],
        ["db", "withdraw-fees", "--node-badge", "0xnothex"],
        ["db", "deprecate-task", "--task-badge", "0x" + "1" * 65],
        ["db", "enable-registration", "--badge", "badge"],
    ):
        err = cli.fail(*argv, address="node-1")
        assert err["kind"] == "InvalidArgument" and "is not an object id" in err["message"], argv
    err = cli.fail("db", "list-events", "--cursor-event-seq", "0")
    assert err["kind"] == "InvalidArgument" and "--cursor-tx-digest" in err["message"]
    assert cli.fail("db", "list-events", "--limit", "0")["kind"] == "InvalidArgument"
    assert cli.fail("localnet", "advance-epoch", "--count", "0")["kind"] == "InvalidArgument"
    assert cli.fail("localnet", "seed-rng", "--seed", "-1")["kind"] == "InvalidArgument"
    assert cli.fail("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "1", "--price", str(U64_MAX + 1), address="user")["kind"] == "InvalidArgument"


# ------------------------------------------------------------------ usage errors: exit 2
@pytest.mark.parametrize(
    "argv",
    [
        ["db", "get-task", "--bogus"],
        ["db", "get-task"],
        ["usdc", "mint", "--amount", "abc"],
        ["db", "no-such-command"],
        ["--bogus", "localnet", "status"],
    ],
)
def test_usage_errors_exit_2(cli, argv):
    result = cli.runner.invoke(app, ["--home", str(cli.home), *argv])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.output


def test_global_options_before_or_after_the_subcommand(cli, capsys):
    """``--json``, ``--home`` and ``--address`` mean the same wherever they are; a flag's value stays a value."""
    home = str(cli.home)
    for argv in (
        ["--home", home, "--json", "usdc", "balance", "user"],
        ["usdc", "balance", "user", "--json", "--home", home],
        ["usdc", "--home", home, "balance", "--json", "user"],
    ):
        assert main(argv) == 0, argv
        assert json.loads(capsys.readouterr().out)["address"] == cli.aliases["user"]
    assert main(["db", "badges", "--home", home, "--address", "admin", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["address"] == cli.aliases["admin"]
    assert main(["db", "get-task", "--task-small-id", "1", "--json", "--home", home]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["kind"] == "NotFound"
    # the ledger group's own options, after its command too
    assert main(["ledger", "earnings", "--home", home, "--ledger", str(cli.home / "none.duckdb"), "--json"]) == 1
    assert "ledger sync" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_help_shows_flags_as_flags():
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["db", "create-task-entry", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--json" in out and "--is-public" in out and "<bool>" not in out


def test_main_usage_error_with_json_prints_one_json_document(cli, capsys):
    rc = main(["--home", str(cli.home), "--json", "db", "get-task", "--bogus"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert json.loads(out) == {"error": {"kind": "UsageError", "message": "No such option: --bogus"}}
    assert "--bogus" in err
    rc = main(["--home", str(cli.home), "--json", "db", "get-task", "--task-small-id", "1"])
    assert rc == 1 and json.loads(capsys.readouterr().out)["error"]["kind"] == "NotFound"
    rc = main(["--home", str(cli.home), "--json", "usdc", "balance", "user"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["base_units"] == 0
    assert main(["--help"]) == 0
    assert "localnet" in capsys.readouterr().out
