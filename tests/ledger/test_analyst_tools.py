"""The ledger in the analysts' own tools: the DuckDB CLI they install (1.4 or later), pandas with Parquet, and the
ledger CLI's tables in an 80-column terminal.

A DuckDB file starts with an 8-byte checksum, the magic ``DUCK`` and the storage version number (little-endian
u64). DuckDB's storage version table: 64 is v0.10/v1.0, 65 v1.2, 66 v1.3, 67 v1.4, 68 v1.5 and 69 v2.0; a DuckDB
release reads every number up to its own (the 1.5 CLI: "we can only read versions between 64 and 68"). So a file
DuckDB 1.4 and later read has a number between 64 and 67.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from atoma_ops.cli.ledger import _table, app
from atoma_ops.ledger import Ledger


def storage_number(path: Path) -> int:
    head = Path(path).read_bytes()[:20]
    assert head[8:12] == b"DUCK", head
    return int.from_bytes(head[12:20], "little")


def test_the_ledger_and_its_snapshot_open_in_duckdb_1_4_and_later(synced, tmp_path):
    assert 64 <= storage_number(synced.path) <= 67
    snap = synced.snapshot(tmp_path / "snap.duckdb")
    assert 64 <= storage_number(snap) <= 67
    con = duckdb.connect(str(snap), read_only=True)
    try:  # the views came along
        totals = dict(con.execute("SELECT node_small_id, total FROM earnings_by_node").fetchall())
    finally:
        con.close()
    assert totals == {1: 1_000_000, 2: 500_000, 3: 700_000}


def test_a_ledger_in_a_newer_storage_format_is_rewritten_once_nothing_lost(synced, tmp_path):
    """A ledger written before (in the Python package's default, newer format) is rewritten in the v1.4 format by
    the next open, with every row and view."""
    old = tmp_path / "ledger.duckdb"
    con = duckdb.connect(str(old))  # the package's default storage format, as the ledger was written before
    try:
        con.execute(f"ATTACH '{synced.path}' AS src (READ_ONLY)")
        con.execute("COPY FROM DATABASE src TO ledger")
        con.execute("DETACH src")
    finally:
        con.close()
    assert storage_number(old) > 67  # the file the DuckDB 1.5 CLI refused

    ledger = Ledger(old)
    by_node = ledger.earnings(by="node")
    assert dict(zip(by_node["node_small_id"], by_node["total"])) == {1: 1_000_000, 2: 500_000, 3: 700_000}
    assert 64 <= storage_number(old) <= 67
    assert len(ledger.stacks()) == len(synced.stacks()) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.duckdb"]  # no temporary file left behind


def test_pandas_reads_the_parquet_export(synced, tmp_path):
    files = {p.stem: p for p in synced.export_parquet(tmp_path / "out")}
    df = pd.read_parquet(files["earnings_by_node"])  # pyarrow, pinned in pyproject.toml
    assert dict(zip(df["node_small_id"], df["total"])) == {1: 1_000_000, 2: 500_000, 3: 700_000}
    assert len(pd.read_parquet(files["stacks"])) == 7


NUMBER = re.compile(r"\d+")


def rendered(df: pd.DataFrame, width: int = 80) -> str:
    out = io.StringIO()
    _table(df, "t", console=Console(file=out, width=width, soft_wrap=True, highlight=False))
    return out.getvalue()


def test_a_table_that_fits_keeps_every_number_on_one_line():
    df = pd.DataFrame(
        [{"node_small_id": 1, "attester_credits_outstanding": 1_234_567_890, "paid_for_disputed_stacks": 98_765_432_1,
          "note": "a long explanation that may fold over several lines without harm"}]
    )
    text = rendered(df)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "┃" in text  # still a table
    for number in ("1234567890", "987654321"):
        assert re.search(rf"(?<!\d){number}(?!\d)", text), text


def test_a_table_too_wide_for_the_terminal_is_shown_as_records():
    row = {f"column_number_{i}": 10_000_000 + i for i in range(9)}
    text = rendered(pd.DataFrame([row, row]))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "-[ row 2 ]" in text
    assert text.count("10000008") == 2


def test_cli_tables_in_80_columns_never_break_a_number(scenario, tmp_path):
    runner = CliRunner()
    base = ["--home", str(scenario.home.path), "--ledger", str(tmp_path / "ledger.duckdb")]
    env = {"ATOMA_OPS_HOME": None, "COLUMNS": "80"}
    assert runner.invoke(app, base + ["sync"], env=env).exit_code == 0
    expected = {  # by hand: scenario.py's stacks, payouts and flow (see test_cli.py)
        "earnings": ["1000000", "900000", "700000", "600000"],
        "stacks": ["1000000", "400000", "250000", "700000"],
        "tickets": ["700000", "300000"],
        "flow": ["4924000", "1212000", "1024000", "1800000", "588000"],
    }
    for command, numbers in expected.items():
        result = runner.invoke(app, base + [command], env=env)
        assert result.exit_code == 0, result.stdout
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, (command, result.stdout)
        whole = {n for line in lines for n in NUMBER.findall(line)}
        assert set(numbers) <= whole, (command, set(numbers) - whole, result.stdout)
