"""``atoma-ops ledger …`` through typer's CliRunner on the sub-app itself (it is mounted by atoma_ops/cli/root.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import duckdb
import pytest
import typer
from typer.testing import CliRunner

from atoma_ops.cli.ledger import app
from atoma_ops.ledger.plot import have_matplotlib


@pytest.fixture(scope="module")
def cli(scenario, tmp_path_factory):
    """Runs ``ledger --home <scenario home> --ledger <own file> …``; the ledger is synced by the first test."""
    runner = CliRunner()
    ledger = tmp_path_factory.mktemp("cli") / "ledger.duckdb"

    def invoke(*args, json_out=True, ledger_path=ledger):
        full = ["--home", str(scenario.home.path), "--ledger", str(ledger_path)]
        if json_out:
            full.append("--json")
        return runner.invoke(app, full + [str(a) for a in args], env={"ATOMA_OPS_HOME": None})

    invoke.ledger = ledger
    invoke("sync")
    return invoke


def ok(result) -> dict:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def test_sync_reports_and_is_idempotent(cli):
    doc = ok(cli("sync"))
    assert doc["events_applied"] == 0 and doc["chain_epoch"] == 1 and doc["ledger"] == str(cli.ledger)


def test_earnings_by_node_task_epoch(cli):
    rows = ok(cli("earnings", "--by", "node"))["earnings"]
    assert {r["node_small_id"]: r["total"] for r in rows} == {1: 1_000_000, 2: 500_000, 3: 700_000}
    rows = ok(cli("earnings", "--by", "epoch"))["earnings"]
    assert {r["epoch"]: r["total"] for r in rows} == {0: 500_000, 1: 1_700_000}
    rows = ok(cli("earnings", "--by", "task"))["earnings"]
    assert sum(r["attester_credits"] for r in rows) == 600_000
    bad = cli("earnings", "--by", "planet")
    assert bad.exit_code == 1 and "node" in json.loads(bad.stdout)["error"]["message"]


def test_stacks_tickets_flow(cli, scenario):
    stacks = ok(cli("stacks"))["stacks"]
    assert [s["status"] for s in stacks] == ["claimed", "claimed", "claimed", "claimed", "in_dispute", "settling", "open"]
    tickets = ok(cli("tickets"))["tickets"]
    f = next(t for t in tickets if t["stack_small_id"] == scenario.ids["F"])
    assert (f["claimable_from_epoch"], f["attestation_window_last_epoch"]) == (2, 2)
    assert [t["stack_small_id"] for t in ok(cli("tickets", "--all"))["tickets"]] == [1, 3, 4, 5, 6]  # A C D E F (B: no ticket)
    flow = ok(cli("flow"))
    assert flow["flow"]["fee_treasury_chain"] == flow["flow"]["fee_treasury_expected"] == 1_024_000
    assert flow["sampling_consensus_payouts"][0]["payouts_over_paid"] == 588_000


def test_human_output(cli):
    for args in (["earnings"], ["stacks"], ["tickets"], ["flow"], ["reconcile", "--no-sync"]):
        result = cli(*args, json_out=False)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        assert result.stdout.strip()
    assert "no drift" in cli("reconcile", json_out=False).stdout


def test_reconcile_exit_status(cli, tmp_path):
    doc = ok(cli("reconcile"))
    assert doc["ok"] is True and doc["drift"] == []
    # a ledger that lost a stack row: the stack and its 100_000 payment are missing, drift, exit 1
    import shutil

    stale = tmp_path / "stale.duckdb"
    shutil.copy(cli.ledger, stale)
    con = duckdb.connect(str(stale))
    con.execute("DELETE FROM stacks WHERE stack_small_id = 7")
    con.close()
    result = cli("reconcile", "--no-sync", ledger_path=stale)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert {(d["entity"], d["key"], d["field"]) for d in doc["drift"]} == {
        ("stack", "7", "exists"), ("treasury", "fee_treasury", "balance")}
    treasury = next(d for d in doc["drift"] if d["entity"] == "treasury")
    assert (treasury["ledger"], treasury["chain"]) == (1_024_000 - 100_000, 1_024_000)
    human = cli("reconcile", "--no-sync", json_out=False, ledger_path=stale)
    assert human.exit_code == 1 and "drift: 2 row" in human.stdout


def test_export_parquet_and_snapshot(cli, tmp_path):
    doc = ok(cli("export", "--parquet", tmp_path / "pq", "--duckdb", tmp_path / "snap.duckdb"))
    assert str(tmp_path / "pq" / "earnings_by_node.parquet") in doc["parquet"]
    con = duckdb.connect()
    rows = con.execute(f"SELECT node_small_id, total FROM '{tmp_path / 'pq' / 'earnings_by_node.parquet'}' ORDER BY 1").fetchall()
    assert rows == [(1, 1_000_000), (2, 500_000), (3, 700_000)]
    leaves = con.execute(f"SELECT octet_length(stack_merkle_leaves) FROM '{tmp_path / 'pq' / 'stack_settlement_tickets.parquet'}'").fetchall()
    assert {r[0] for r in leaves} == {64}
    con.close()
    snap = duckdb.connect(doc["duckdb"], read_only=True)  # analysts keep this one open as long as they like
    assert snap.execute("SELECT paid_in FROM usdc_flow").fetchall() == [(4_924_000,)]
    # …while the live ledger stays free for syncs
    assert ok(cli("sync"))["events_applied"] == 0
    snap.close()
    assert cli("export").exit_code == 2


def test_plot(cli, tmp_path):
    out = tmp_path / "earnings.png"
    result = cli("plot", "--out", out)
    if have_matplotlib():
        assert result.exit_code == 0, result.stdout
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000
    else:
        assert result.exit_code == 1
        message = json.loads(result.stdout)["error"]["message"]
        assert "matplotlib" in message and "pip install matplotlib==" in message
        assert not out.exists()


def test_missing_ledger_and_missing_home(cli, tmp_path):
    result = cli("earnings", ledger_path=tmp_path / "none.duckdb")
    assert result.exit_code == 1 and "ledger sync" in json.loads(result.stdout)["error"]["message"]
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(tmp_path / "nohome"), "--json", "sync"])
    assert result.exit_code == 1 and "localnet init" in json.loads(result.stdout)["error"]["message"]


def test_mounted_under_a_root_app_inherits_home_and_json(scenario, cli):
    """How atoma_ops/cli/root.py mounts it: ``atoma-ops --home DIR --json ledger earnings``."""
    root = typer.Typer()

    @root.callback()
    def _root(ctx: typer.Context, home: str = typer.Option(None, "--home"), json_: bool = typer.Option(False, "--json")):
        ctx.obj = SimpleNamespace(home=home, json=json_, address=None)

    root.add_typer(app, name="ledger")
    result = CliRunner().invoke(root, ["--home", str(scenario.home.path), "--json", "ledger", "--ledger", str(cli.ledger),
                                       "earnings", "--by", "epoch"])
    assert result.exit_code == 0, result.stdout
    assert {r["epoch"] for r in json.loads(result.stdout)["earnings"]} == {0, 1}
