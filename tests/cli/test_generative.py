"""The generative CLI test's fast slice: every command of ``atoma-ops`` driven by hypothesis with values from its
parameters' types and edges (``reliability/cli_fuzz.py`` has the rules; its long run is part of
``make reliability``). One scenario home is built per module and copied per case."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from reliability import cli_fuzz

COMMANDS = cli_fuzz.commands()
PER_COMMAND = 3  # 60-odd commands: ~190 cases, about 30 s on 2 cores


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    with cli_fuzz.Harness.open(tmp_path_factory.mktemp("cli-fuzz")) as h:
        yield h


def test_the_tree_is_walked_whole():
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"localnet init", "db try-settle-stack", "db set-cross-validation-probability-permille", "node serve",
            "stack attest", "ledger export", "usdc mint"} <= paths
    assert len(paths) >= 60


# Prefect's events client (started in this worker process by an earlier flow test) pings its websocket from its own
# event-loop thread, and the websockets library draws each ping's payload from the global `random` state
# (websockets/asyncio/connection.py, ping). A ping during one of this test's draws makes Hypothesis warn that the
# strategy used `random`; these strategies do not (traced over a whole suite run: that ping is the only use of the
# global state from another thread).
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)
@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_meets_its_edges(harness, path, command):
    @settings(max_examples=PER_COMMAND, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data):
        own = harness.fresh()
        argv = data.draw(cli_fuzz.argv_for(path, command, harness.places, own))
        outcome = harness.check(own, argv)
        assert not outcome.problems, (outcome.argv, outcome.status, outcome.problems)

    one()


# ------------------------------------------------------------------ the rules find what they look for
def _copy(harness):
    from reliability.bad_inputs import copy_home

    own = harness.fresh()
    own.mkdir(parents=True)
    copy_home(harness.scenario_home, own / "home")
    return own


def test_a_failure_that_changed_state_is_found(harness):
    own = _copy(harness)
    home = str(own / "home")
    assert cli_fuzz.run(["--home", home, "--json", "usdc", "mint", "--amount", "5", "--to", "user"])[0] == 0
    outcome = cli_fuzz.check_case(["--home", home, "--json", "usdc", "mint", "--amount", "-1"], own, harness.before,
                                  harness.places, harness.places_before, harness.before_files)
    assert outcome.status == 1 and outcome.kind == "InvalidArgument"
    assert any("failed, yet changed: chain" in p for p in outcome.problems), outcome.problems


def test_an_internal_error_and_a_leftover_are_found(harness, monkeypatch):
    own = _copy(harness)
    (own / "half.json.tmp").write_text("{")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("atoma_ops.chain.localnet.adapter.LocalnetChain.current_epoch", broken)
    argv = ["--home", str(own / "home"), "--json", "localnet", "status"]
    outcome = cli_fuzz.check_case(argv, own, harness.before, harness.places, harness.places_before, harness.before_files)
    assert outcome.status == 3 and outcome.kind == "InternalError"
    assert any("exit status 3" in p for p in outcome.problems)
    assert any("half.json.tmp" in p for p in outcome.problems)
    # the one error path: a named line, the traceback only under --debug
    status, out, err = cli_fuzz.run(["--home", str(own / "home"), "localnet", "status"])
    assert status == 3 and "InternalError" in err and "RuntimeError: a bug" in err and "Traceback" not in err
    status, out, err = cli_fuzz.run(["--home", str(own / "home"), "localnet", "status", "--debug", "--json"])
    assert status == 3 and "Traceback" in err and json.loads(out)["error"]["kind"] == "InternalError"


def test_a_write_outside_the_case_folder_is_found(harness):
    """Cases run in an empty working directory: an export to "." (allowed: the user asked for it) shows as a write
    outside the case's folder, which is how an empty path taken for "." was found."""
    own = _copy(harness)
    argv = ["--home", str(own / "home"), "--json", "ledger", "export", "--parquet", "."]
    outcome = cli_fuzz.check_case(argv, own, harness.before, harness.places, harness.places_before, harness.before_files)
    assert outcome.status == 0 and any("wrote outside its folder" in p for p in outcome.problems), outcome.problems
    status, out, _ = cli_fuzz.run(["--home", str(own / "home"), "--json", "ledger", "export", "--parquet", ""])
    assert status == 1 and json.loads(out)["error"]["message"] == "--parquet: give a folder name"
