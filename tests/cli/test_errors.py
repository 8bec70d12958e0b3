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


# ------------------------------------------------------------------ check, then act
def test_init_force_that_fails_keeps_the_old_home_and_its_keys(cli, tmp_path):
    home = cli.home
    keystore = (home / "sui.keystore").read_bytes()
    files = sorted(p.name for p in home.iterdir())
    err = cli.fail("localnet", "init", "--force", "--epoch-duration-ms", str(2**64))
    assert err["kind"] == "InvalidArgument" and "--epoch-duration-ms" in err["message"]
    assert (home / "sui.keystore").read_bytes() == keystore and sorted(p.name for p in home.iterdir()) == files
    assert sorted(p.name for p in home.parent.iterdir()) == ["home"]  # nothing built beside it is left
    assert cli.ok("usdc", "balance", "user")["address"] == cli.aliases["user"]
    # a successful --force swaps in a new wallet and keeps files that no localnet owns
    (home / "notes.txt").write_text("mine")
    doc = cli.ok("localnet", "init", "--force", "--seed", "2")
    assert doc["aliases"]["user"] != cli.aliases["user"] and (home / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in home.parent.iterdir()) == ["home"]
    assert cli.ok("usdc", "balance", "user")["address"] == doc["aliases"]["user"]


def test_epochs_stop_at_the_last_one_the_stores_hold(cli):
    from atoma_ops.protocol.epochs import MAX_EPOCH

    assert MAX_EPOCH == 2**63 - 1 - 4  # the contract adds at most NODE_DESTROY_DELAY (4) to a stored epoch
    assert cli.fail("localnet", "advance-epoch", "--count", str(2**64))["kind"] == "InvalidArgument"
    assert cli.ok("localnet", "advance-epoch", "--count", str(MAX_EPOCH))["epoch"] == MAX_EPOCH
    err = cli.fail("localnet", "advance-epoch")
    assert err["kind"] == "InvalidArgument" and str(MAX_EPOCH) in err["message"]
    assert cli.ok("localnet", "status")["epoch"] == MAX_EPOCH


def test_node_serve_refuses_a_busy_port_before_loading_the_engine(cli):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the default engine is cpu: had it loaded, this would take tens of seconds and print "loading"
        result = cli.invoke("node", "serve", "--node", "node-1", "--port", str(port))
    assert result.exit_code == 1 and "PortUnavailable" in result.stderr and "loading" not in result.stderr
    assert cli.fail("node", "serve", "--node", "node-1", "--port", "0")["kind"] == "InvalidArgument"


def test_ledger_refuses_a_sqlite_file_without_fetching_an_extension(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # where DuckDB would install an extension
    err = cli.fail("ledger", "--ledger", str(cli.home / "chain.sqlite"), "sync")
    assert err["kind"] == "LedgerError" and "not a DuckDB ledger (a SQLite database)" in err["message"]
    assert not (tmp_path / ".duckdb").exists()
    from atoma_ops.ledger.store import CONFIG

    assert CONFIG["autoinstall_known_extensions"] is False and CONFIG["autoload_known_extensions"] is False


def test_exports_refuse_existing_files_by_name(cli, tmp_path):
    cli.ok("ledger", "sync")
    existing = tmp_path / "taken.duckdb"
    existing.write_text("keep")
    err = cli.fail("ledger", "export", "--duckdb", str(existing))
    assert err["kind"] == "FileExists" and str(existing) in err["message"] and existing.read_text() == "keep"
    err = cli.fail("ledger", "export", "--parquet", str(existing))
    assert err["kind"] == "NotADirectory"
    out = tmp_path / "pq"
    assert len(cli.ok("ledger", "export", "--parquet", str(out))["parquet"]) > 5
    err = cli.fail("ledger", "export", "--parquet", str(out))
    assert err["kind"] == "FileExists" and ".parquet" in err["message"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no staging file or folder left


def test_readme_commands_paste_as_they_are():
    """Every ``atoma-ops`` line of the README's shell blocks names a real command and its real options, and is no
    shell pipe (``a | b`` in a command line would run as one)."""
    import re
    import shlex
    from pathlib import Path

    import typer

    root = typer.main.get_command(app)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        lines += [ln for ln in block.replace("\\\n", " ").splitlines() if ln.startswith("atoma-ops ")]
    assert len(lines) >= 20
    for line in lines:
        words = shlex.split(line.split("  #")[0], comments=True)
        assert "|" not in words, line
        if "&&" in words:
            words = words[: words.index("&&")]
        command, names = root, set()
        for w in words[1:]:
            if w.startswith("-"):
                names.add(w.split("=")[0])
            elif hasattr(command, "commands") and w in command.commands:
                command = command.commands[w]
        assert not hasattr(command, "commands"), line  # a leaf command was reached
        if (command.context_settings or {}).get("ignore_unknown_options"):
            continue  # a pass-through to another program's command line (atoma-ops prefect …)
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--home", "--json", "--address"}
        assert names <= known, (line, names - known)
